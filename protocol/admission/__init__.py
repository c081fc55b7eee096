"""Admission to a run's rosters: a proof of work bound to the key (work.py) and the rule that
bounds how many such proofs a roster's leader and readers check (rule.py). Trust design, step 7."""
