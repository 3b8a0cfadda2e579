"""LEADS MCP server (the action space as tools). Built in the server issue."""
