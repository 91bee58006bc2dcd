"""Typed options shared by the commands; help text comes from the recipe's field metadata."""

from pathlib import Path
from typing import Annotated

import typer

from distill_cli.recipe import help_for

RecipePath = Annotated[Path | None, typer.Option("--recipe", help="YAML recipe file.")]
Teacher = Annotated[str | None, typer.Option("--teacher", help=help_for("teacher"))]
Student = Annotated[str | None, typer.Option("--student", help=help_for("student.path"))]
Data = Annotated[str | None, typer.Option("--data", help=help_for("data.name"))]
OutputDir = Annotated[Path, typer.Option("--output-dir", help="Folder the student is written to.")]
MaxSteps = Annotated[int | None, typer.Option("--max-steps", help=help_for("train.max_steps"))]
Seed = Annotated[int | None, typer.Option("--seed", help=help_for("train.seed"))]
Sets = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any recipe value: --set train.epochs=3 (repeatable)."),
]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Start again: replace what an earlier run wrote in --output-dir (other files stay).",
    ),
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue the run in --output-dir from its newest checkpoint (rerunning the same "
        "command on a folder with checkpoints does this too); an error if there is none.",
    ),
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option("--trust-remote-code", help="Allow model code from the checkpoint's repo to run."),
]
TeacherCache = Annotated[
    Path | None,
    typer.Option(
        "--teacher-cache",
        help="Train on the teacher outputs stored in this cache folder (teacher_cache.mode=read).",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")]


def typed_options(teacher, student, data, max_steps, seed, teacher_cache=None) -> dict:
    """The typed training options as dotted recipe keys (None: not given)."""
    return {
        "teacher_cache.mode": "read" if teacher_cache else None,
        "teacher_cache.path": str(teacher_cache) if teacher_cache else None,
        "teacher": teacher,
        "data.name": data,
        "train.max_steps": max_steps,
        "train.seed": seed,
        "student.init": "checkpoint" if student else None,
        "student.path": student,
    }
