"""leads-agent: the ReAct client. Built in the agent issue."""
