"""The MCP edge: the server, its tools, resources, prompts and notifications, and the HTTP app.

The only package of the gateway that imports the MCP SDK."""
