"""Parameter sweeps, the pure part: what `infra sweep` decides without touching anything.

- `parameters`: a parameters file (YAML) → a `Grid` of axes, with located errors and a limit;
- `plan`: the grid and a command → one `Run` per combination (its argv, never a shell string),
  what `--resume` still has to run, the plan handed to the driver in the master container;
- `results`: metrics read from a run's output, the CSV rows, the table of the best rows, the
  progress line.

What runs inside the containers is `infra.runtime`; the workflow that connects the two is
`infra.workflows.sweep`.
"""
