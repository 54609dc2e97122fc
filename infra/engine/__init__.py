"""The Docker engine of each host, driven through the Docker SDK over the host's connection.

- `engine.Engine`: infra's engine operations (`infra.commands.engine`) as SDK calls, with
  every failure turned into one of infra's one-line errors;
- `transport`: the SDK's HTTP carried over channels of the host's SSH connection
  (`docker system dial-stdio`), or this machine's socket;
- `wire`: the pure translations between the two (no I/O, no SDK).

Nothing is imported here, so that `infra.engine.wire` stays free of the SDK's import cost;
connections give their host's engine as `Connection.engine`.
"""
