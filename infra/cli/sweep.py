"""`infra sweep`: run a command once per combination of a parameters file, on the workers
(`infra sweep run`, the default subcommand), and `infra sweep report`, its results as a page."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import ConfigError
from .options import cluster_file_option, handle_errors, load_cluster_file

if TYPE_CHECKING:
    from ..config import Cluster
    from ..workflows.sweep import SweepOptions, SweepPlan

PROGRESS_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal


class _SweepCommand(click.Command):
    """Says where the command goes when one of its options was taken for one of ours."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            exc.message = (f"{exc.message}: put the command to run after `--`, "
                           "e.g. infra sweep parameters.yml -- python train.py --data x")
            raise


class _Size(click.ParamType):
    """A size such as 100MB or 500kB, in bytes (`sweep.artifacts.parse_size`)."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        from ..sweep.artifacts import parse_size

        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _RunByDefault(click.Group):
    """A group whose first word, when it is no subcommand, starts `run`: `infra sweep -f c.yaml p.yml -- cmd`
    means `infra sweep run -f c.yaml p.yml -- cmd`, as it did before `infra sweep` had subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_RunByDefault)
def sweep() -> None:
    """Run a command once per combination of a parameters file, and look at the results.

    \b
    `infra sweep ARGS` is `infra sweep run ARGS`: the commands are
      run      run COMMAND once per combination, spread over the workers (the default)
      report   write output/sweep-NAME/report.html: best runs, plots, learning curves

    \b
    Example:
      infra sweep -f cluster.yaml parameters.yml --sort -accuracy -- python train.py
      infra sweep report parameters --open
    """


@sweep.command("run", cls=_SweepCommand)
@cluster_file_option
@click.argument("parameters", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--name", help="Name of the sweep: output/sweep-NAME.csv; default: the parameters file's name.")
@click.option("--dry-run", is_flag=True, help="List the combinations and their commands; run nothing.")
@click.option("--resume", is_flag=True,
              help="Run only the combinations that did not finish ok in output/sweep-NAME.csv.")
@click.option("--retries", type=click.IntRange(0, 100), default=0, show_default=True,
              help="Run a failed or timed-out combination again, up to this many times.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop a run after this long (status timeout); default: no limit.")
@click.option("--gpus-per-task", type=click.IntRange(0, 64), default=1, show_default=True,
              help="GPUs each run gets on a GPU worker (CUDA_VISIBLE_DEVICES); 0: runs share them.")
@click.option("--queue", help="Queue of the runs; default: celery, or the first queue the workers consume.")
@click.option("--sort", "sort_by", metavar="[-]METRIC",
              help="At the end, list the best rows by this metric: -accuracy (highest first), loss (lowest first); "
                   "also the objective of --search optuna and of --pruner.")
@click.option("--top", type=click.IntRange(1, 10_000), default=10, show_default=True,
              help="How many rows --sort lists.")
@click.option("--max-combinations", type=click.IntRange(1), default=10_000, show_default=True,
              help="Refuse parameters files with more combinations than this (a guard against typos).")
@click.option("--search", "search_kind", type=click.Choice(["grid", "random", "optuna"]), default="grid",
              show_default=True,
              help="grid: every combination; random: --trials drawn from the file's distributions; optuna: "
                   "--trials chosen by an Optuna study from the results so far (needs --sort, its objective).")
@click.option("--trials", type=click.IntRange(1, 100_000), metavar="N",
              help="Runs of a random or Optuna search (required for them; a grid runs every combination).")
@click.option("--seed", type=click.IntRange(0), metavar="S",
              help="Seed of a random search (the same seed, the same trials) or of Optuna's sampler; default 0.")
@click.option("--sampler", type=click.Choice(["tpe", "random"]),
              help="Optuna's sampler for --search optuna; default: tpe.")
@click.option("--pruner", type=click.Choice(["none", "median", "halving", "hyperband"]), default="none",
              show_default=True,
              help="Early stopping, any search: stop runs whose `epoch=N METRIC=X` (or step=N) lines fall behind, "
                   "by Optuna's median, successive-halving or Hyperband pruner; METRIC is --sort's.")
@click.option("--artifact-limit", "artifact_limit", type=_Size(), metavar="SIZE", default="100MB", show_default=True,
              help="Most bytes of files brought back from each run's own folder ($INFRA_RUN_DIR, `{run_dir}` "
                   "in the command) into output/sweep-NAME/runs/INDEX/; files beyond it, and links or special files "
                   "(never read), are left out with a warning. 500kB, 2GB, 0 (none).")
@click.option("-q", "--quiet", is_flag=True, help="Show a progress line instead of the runs' output.")
@handle_errors
def run(cluster_file: Path, parameters: Path, command: tuple[str, ...], name: str | None, dry_run: bool,
          resume: bool, retries: int, timeout: float | None, gpus_per_task: int, queue: str | None,
          sort_by: str | None, top: int, max_combinations: int, search_kind: str, trials: int | None,
          seed: int | None, sampler: str | None, pruner: str, artifact_limit: int, quiet: bool) -> None:
    """Run COMMAND once per combination of the PARAMETERS file, spread over the workers.

    \b
    PARAMETERS (YAML) maps each parameter to its values:
      lr: [0.1, 0.01]                  each value
      epochs: {range: [5, 20, 5]}      5, 10, 15 (the end is excluded)
      epoch: !!python/tuple [5,20,5]   the same, as the original framework wrote it
      shuffle: true                    a flag: --shuffle (false leaves it out)
      gpu: "-1"                        one value
    With --search random or optuna, each parameter has a distribution instead:
      lr: {loguniform: [1.0e-5, 1.0e-1]}   x: {uniform: [-2.0, 2.0]}
      layers: {int: [1, 8]}  width: {int: [16, 512], log: true}  opt: {choice: [sgd, adam]}
    Each combination runs `COMMAND --lr 0.1 --epochs 5 --shuffle ...` in the project
    folder on a worker (no shell: values are passed as they are). The project needs no
    Celery code. Output streams here, each line prefixed with its combination.

    \b
    Results: output/sweep-NAME.csv, one row per combination (parameters, status, exit
    code, seconds, host, attempts, metrics, log). Metrics are the last line of a run's
    output that is a JSON object, else its `key=value` lines. Each run's full output is
    in output/sweep-NAME/logs/. A worker host lost mid-sweep: its runs go to others.
    Ctrl-C stops the sweep and keeps what finished; --resume runs the rest (an Optuna
    search continues its study, output/sweep-NAME/study.journal on the master).
    A run stopped by --pruner is `pruned` in the CSV, with its last metrics; the end
    says how much run time early stopping saved. Each run's own folder, $INFRA_RUN_DIR (`{run_dir}`
    in COMMAND), comes back into output/sweep-NAME/runs/INDEX/ (see --artifact-limit).

    \b
    Exit code: 0 all ok; 1 a run failed (or infra did); 2 bad input; 130 interrupted.

    \b
    Example:
      infra sweep -f cluster.yaml parameters.yml --dry-run -- python train.py
      infra sweep -f cluster.yaml parameters.yml --sort -accuracy -- python train.py --data d.csv
      infra sweep -f cluster.yaml parameters.yml --resume --retries 1 -q -- python train.py
      infra sweep -f cluster.yaml space.yml --search optuna --trials 32 --sort loss \\
          --pruner median -- python curve.py
    """
    from ..sweep.results import SortSpec
    from ..sweep.search import SearchOptions
    from ..workflows.sweep import SweepOptions, dry_run_lines, prepare_sweep

    try:
        sort = SortSpec.parse(sort_by) if sort_by is not None else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cluster = load_cluster_file(cluster_file)
    options = SweepOptions(name=name, resume=resume, retries=retries, timeout=timeout, gpus_per_task=gpus_per_task,
                           queue=queue, max_combinations=max_combinations, sort=sort, top=top,
                           search=SearchOptions(search_kind, trials, seed, sampler, pruner), artifact_limit=artifact_limit)
    plan = prepare_sweep(cluster, parameters, command, options)
    if dry_run:
        for line in dry_run_lines(plan):
            click.echo(line)
        return
    sys.exit(_run_sweep(cluster, plan, options, quiet))


def _run_sweep(cluster: Cluster, plan: SweepPlan, options: SweepOptions, quiet: bool) -> int:
    """Run the sweep, its output (or a progress line) on the terminal, then its summary; its exit code."""
    from ..workflows.sweep import resume_note, run_sweep, summary_lines

    def note(message: str) -> None:
        click.echo(f"infra: {message}", err=True)

    progress = _Progress() if quiet else None
    resumed = resume_note(plan)
    if resumed is not None:
        note(resumed)
    summary = run_sweep(cluster, plan, options, out=click.echo, err=lambda line: click.echo(line, err=True),
                        note=note if progress is None else progress.wrap(note),
                        status=progress.show if progress else None, quiet=quiet)
    if progress is not None:
        progress.done()
    for line in summary_lines(plan, summary):
        click.echo(line)
    return summary.exit_code


class _Progress:
    """One progress line on stderr: redrawn in place on a terminal, else printed now and then."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.last_text = ""
        self.last_shown = 0.0
        self.width = 0

    def show(self, text: str) -> None:
        self.last_text = text
        now = time.monotonic()
        if self.tty:
            if now - self.last_shown >= 0.1:
                click.echo("\r" + text.ljust(self.width), nl=False, err=True)
                self.width = len(text)
                self.last_shown = now
        elif now - self.last_shown >= PROGRESS_EVERY:
            click.echo(text, err=True)
            self.last_shown = now

    def wrap(self, note):
        def noted(message: str) -> None:
            if self.tty and self.width:
                click.echo("\r" + " " * self.width + "\r", nl=False, err=True)
                self.width = 0
            note(message)
        return noted

    def done(self) -> None:
        if self.last_text:
            if self.tty:
                click.echo("\r" + self.last_text.ljust(self.width), err=True)
            else:
                click.echo(self.last_text, err=True)


@sweep.command("report")
@click.argument("target", metavar="NAME|PATH")
@click.option("-f", "--file", "cluster_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A cluster file: NAME is looked for in its project's output/ (before ./output/).")
@click.option("--sort", "sort_by", metavar="[-]METRIC",
              help="Rank the runs by this metric: -accuracy (highest first), loss (lowest first); "
                   "default: the first metric whose name says which way is better (accuracy, loss, ...).")
@click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="How many runs the best-runs table lists.")
@click.option("--open", "open_page", is_flag=True, help="Open the report in the browser once written.")
@handle_errors
def report(target: str, cluster_file: Path | None, sort_by: str | None, top: int, open_page: bool) -> None:
    """Write a sweep's report, output/sweep-NAME/report.html, from its CSV and logs.

    \b
    NAME|PATH: a sweep's name (output/sweep-NAME.csv, in the project of --file, else
    in ./output/), its folder output/sweep-NAME, or its CSV. The page is one file that
    opens with no network: the best runs, the metric across the parameters (parallel
    coordinates) and against each, learning curves of the metrics runs print as they
    go (`epoch=3 loss=0.31`; pruned runs dotted), and run time per host. `infra sweep
    run` writes it too, as results come in.

    \b
    Example:
      infra sweep report parameters --open
      infra sweep report -f cluster.yaml parameters --sort loss
      infra sweep report projects/sweep-demo/output/sweep-parameters
    """
    from ..sweep.results import SortSpec
    from ..workflows.sweep_report import find_sweep, write_report

    try:
        sort = SortSpec.parse(sort_by) if sort_by is not None else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    output_dirs = []
    if cluster_file is not None:
        output_dirs.append(load_cluster_file(cluster_file).project_dir / "output")
    output_dirs.append(Path("output"))
    path = write_report(find_sweep(target, output_dirs), sort, top)
    click.echo(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if open_page:
        click.launch(str(path))
