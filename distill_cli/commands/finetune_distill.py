"""distill finetune-distill: the task stage (TKD-NLP, plain fine-tuning)."""

import json

from rich.table import Table

from distill_cli.commands import options as o
from distill_cli.outputs import check_not_input
from distill_cli.recipe import load_recipe
from distill_cli.reporting import out_console
from distill_cli.training import train


def command(
    output_dir: o.OutputDir,
    recipe: o.RecipePath = None,
    teacher: o.Teacher = None,
    student: o.Student = None,
    data: o.Data = None,
    max_steps: o.MaxSteps = None,
    teacher_cache: o.TeacherCache = None,
    seed: o.Seed = None,
    set_: o.Sets = None,
    overwrite: o.Overwrite = False,
    resume: o.Resume = False,
    trust_remote_code: o.TrustRemoteCode = False,
    json_: o.Json = False,
) -> None:
    """Distil a task teacher into a student on labelled data (or fine-tune with no teacher)."""
    check_not_input(output_dir, [("recipe", recipe)])  # train.run checks the other inputs
    r = load_recipe(
        recipe, o.typed_options(teacher, student, data, max_steps, seed, teacher_cache), set_ or []
    )
    summary = train.run(
        r,
        output_dir,
        stage="task",
        overwrite=overwrite,
        resume=resume,
        trust_remote_code=trust_remote_code,
    )
    if summary.pop("is_main_process"):
        print_summary(summary, json_)


def print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title="training run")
    table.add_column("field")
    table.add_column("value", justify="right")
    for key in ("output_dir", "stage", "steps", "runtime_s", "train_samples_per_s", "final_loss"):
        value = summary.get(key)
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    for key, value in summary.get("eval", {}).items():
        table.add_row(f"{summary['eval_split']} {key}", f"{value:.4f}")
    out_console().print(table)
