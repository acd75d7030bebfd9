"""Memory and time decisions: model facts, the cost model, the planner and how a plan is applied."""
