"""distill pretrain-distill: the task-agnostic GLMD stage on raw text."""

from distill_cli.commands import options as o
from distill_cli.commands.finetune_distill import print_summary
from distill_cli.outputs import check_not_input
from distill_cli.recipe import load_recipe
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
    """Distil a teacher's word predictions into a student on raw text (GLMD stage 1)."""
    check_not_input(output_dir, [("recipe", recipe)])  # train.run checks the other inputs
    r = load_recipe(
        recipe, o.typed_options(teacher, student, data, max_steps, seed, teacher_cache), set_ or []
    )
    summary = train.run(
        r,
        output_dir,
        stage="pretrain",
        overwrite=overwrite,
        resume=resume,
        trust_remote_code=trust_remote_code,
    )
    if summary.pop("is_main_process"):
        print_summary(summary, json_)
