"""The outer step: the swarm state every peer holds, the strategies that turn local training into
updates and apply the round's aggregate, robust aggregation, update scoring, and overlap."""
