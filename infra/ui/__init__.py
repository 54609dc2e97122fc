"""What people see: the reporter's lines, `up`'s plan and summary, `status`'s table and JSON."""
