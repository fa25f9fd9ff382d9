"""Tokens, inventory, SSH key formats, agent, enrollment and the sshd helper."""
