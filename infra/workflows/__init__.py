"""One module per command: gather facts, plan, execute the steps through the runner, record."""
