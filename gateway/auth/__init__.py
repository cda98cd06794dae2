"""Who may call: principals and scopes, token sources, and Vault. No MCP SDK here."""
