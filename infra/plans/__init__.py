"""Pure decisions: from a validated cluster and host facts to the steps that make the hosts match."""
