from pathlib import Path

import pytest
import yaml

from distill_cli.errors import DistillError
from distill_cli.recipe import Recipe, help_for, load_recipe, to_yaml, validate

RECIPES_DIR = Path(__file__).parents[1] / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load_and_validate(path):
    text = path.read_text()
    assert text.startswith("#"), "a recipe opens with a comment naming its source and command"
    assert "distill " in text.split("\n\n")[0] or "distill " in text[:1500]
    recipe = load_recipe(
        path, {"teacher": "some/teacher", "data.name": "sst2", "student.path": "x"}
    )
    validate(recipe)


def test_tkd_nlp_numbers():
    r = load_recipe(Path(__file__).parents[1] / "recipes/tkd-nlp.yaml")
    (phase,) = r.phases
    assert phase.terms["soft_label_kl"].weight == 0.5 and phase.terms["ce"].weight == 0.5
    assert phase.terms["soft_label_kl"].temperature == 1.0
    assert (r.train.batch_size, r.train.epochs, r.train.optimizer) == (64, 10, "adamw")
    assert r.train.mixed_precision == "fp16"
    # no default teacher: a base model has no trained classifier and is always refused
    assert r.teacher is None
    with pytest.raises(DistillError, match="this recipe needs a teacher: pass --teacher"):
        validate(load_recipe(RECIPES_DIR / "tkd-nlp.yaml", {"data.name": "sst2"}))


def _numbers(node, key=""):
    """(dotted key, literal text) of every numeric scalar in a composed YAML node."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            yield from _numbers(v, f"{key}.{k.value}" if key else k.value)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            yield from _numbers(v, f"{key}.{i}")
    elif node.tag.endswith((":int", ":float")):
        yield key, node.value


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_number_has_a_source(path):
    """docs/methods.md has a row `| key | value | source |` for every number in every recipe."""
    text = path.read_text()
    assert "docs/methods.md" in text.split("\nmethod:")[0], "the opening comment cites it"
    doc = (RECIPES_DIR.parent / "docs" / "methods.md").read_text()
    section = doc.split(f"### `recipes/{path.name}`")[1].split("\n#")[0]
    numbers = list(_numbers(yaml.compose(text)))
    assert numbers
    for key, literal in numbers:
        row = f"| `{key}` | {literal} | "
        assert row in section, f"docs/methods.md has no row {row!r} under recipes/{path.name}"
        source = section.split(row)[1].split("\n")[0]
        assert source.startswith(("paper", "ours", "as ")), source


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_precedence_defaults_recipe_options_set(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 4\n  batch_size: 8\n  seed: 1\n")
    r = load_recipe(path, {"train.seed": 7, "train.max_steps": None}, ["train.batch_size=16"])
    assert r.train.epochs == 4  # recipe over default
    assert r.train.seed == 7  # typed option over recipe
    assert r.train.batch_size == 16  # --set over everything
    assert r.train.learning_rate == Recipe().train.learning_rate  # default kept
    r = load_recipe(path, {"train.seed": 7}, ["train.seed=9"])
    assert r.train.seed == 9


def test_yaml_scientific_notation_is_a_float(tmp_path):
    r = load_recipe(write(tmp_path, "train:\n  learning_rate: 5e-5\n"))
    assert r.train.learning_rate == pytest.approx(5e-5)


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(DistillError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert "train.epoch" in msg and str(path) in msg and "did you mean 'epochs'" in msg


def test_wrong_type_names_expected_type(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: lots\n")
    with pytest.raises(DistillError, match=r"train.batch_size' expects int, got 'lots'"):
        load_recipe(path)


def test_set_reaches_into_lists_and_checks_keys(tmp_path):
    path = write(tmp_path, "phases:\n  - name: a\n    terms: {ce: {weight: 1.0}}\n")
    r = load_recipe(path, sets=["phases.0.max_steps=5"])
    assert r.phases[0].max_steps == 5
    with pytest.raises(DistillError, match="has no item 3"):
        load_recipe(path, sets=["phases.3.max_steps=5"])
    with pytest.raises(DistillError, match="expected KEY=VALUE"):
        load_recipe(path, sets=["train.epochs"])


def test_validate_collects_every_problem():
    r = load_recipe(
        None,
        sets=[
            "phases.0.terms={soft_label_kl: {weight: -1, temperature: 0}}",
            "train.mixed_precision=fp8",
        ],
    )
    with pytest.raises(DistillError) as e:
        validate(r)
    msg = str(e.value)
    assert "\n" not in msg
    for part in (
        "soft_label_kl.temperature must be > 0",
        "weight must be >= 0",
        "mixed_precision",
        "num_layers",
        "needs a teacher",
        "no data",
    ):
        assert part in msg


def test_resolved_yaml_round_trips(tmp_path):
    r = load_recipe(Path(__file__).parents[1] / "recipes/tkd-nlp.yaml", sets=["train.epochs=2"])
    again = load_recipe(write(tmp_path, to_yaml(r)))
    assert again == r


def test_help_comes_from_field_metadata():
    assert "optimizer steps" in help_for("train.max_steps")
    assert help_for("data.name").startswith("Dataset")


def test_yaml_no_stays_a_string(tmp_path):
    # YAML 1.1 reads a bare `no` as false; recipes follow YAML 1.2 booleans (true/false only).
    r = load_recipe(write(tmp_path, "train:\n  mixed_precision: no\n"), sets=["data.packing=none"])
    assert r.train.mixed_precision == "no" and r.data.packing == "none"
    r = load_recipe(None, sets=["train.mixed_precision=no"])
    assert r.train.mixed_precision == "no"


def test_a_term_takes_only_its_own_parameters(tmp_path):
    path = write(tmp_path, "phases:\n  - terms: {ce: {weight: 1.0, temperature: 2.0}}\n")
    with pytest.raises(DistillError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert str(path) in msg and "loss term 'ce' takes no parameter 'temperature'" in msg
    assert msg.endswith("it takes: weight")
    with pytest.raises(DistillError, match="'soft_label_kl' takes no parameter 'layer_map'.*"):
        load_recipe(None, sets=["phases.0.terms={soft_label_kl: {layer_map: [1]}}"])
    r = load_recipe(None, sets=["phases.0.terms={hidden_mse: {layer_map: [2, 4]}}"])
    assert r.phases[0].terms["hidden_mse"].layer_map == [2, 4]


def test_an_unknown_term_lists_the_known_ones():
    with pytest.raises(DistillError, match="unknown loss term 'bogus'.*known terms: .*ce"):
        load_recipe(None, sets=["phases.0.terms={bogus: {weight: 1.0}}"])


TKD = Path(__file__).parents[1] / "recipes/tkd-nlp.yaml"


def test_set_on_an_absent_term_is_an_error_unless_it_sets_the_weight(capsys):
    with pytest.raises(DistillError) as e:
        load_recipe(TKD, sets=["phases.0.terms.word_kl.temperature=5"])
    msg = str(e.value)
    assert msg.startswith("--set phases.0.terms.word_kl.temperature=5: ")
    assert "no loss term 'word_kl'" in msg and "its terms: soft_label_kl, ce" in msg
    assert "phases.0.terms.word_kl.weight" in msg
    assert capsys.readouterr().err == ""

    sets = ["phases.0.terms.word_kl.weight=0.5", "phases.0.terms.word_kl.temperature=5"]
    r = load_recipe(TKD, sets=sets)
    assert r.phases[0].terms["word_kl"].weight == 0.5
    assert r.phases[0].terms["word_kl"].temperature == 5.0
    assert "adding loss term 'word_kl' to phase 0" in capsys.readouterr().err


def test_set_checks_parameters_of_present_terms():
    with pytest.raises(
        DistillError, match=r"^--set phases.0.terms.ce.temperature=2: .*takes: weight"
    ):
        load_recipe(TKD, sets=["phases.0.terms.ce.temperature=2"])
    r = load_recipe(TKD, sets=["phases.0.terms.soft_label_kl.temperature=2"])
    assert r.phases[0].terms["soft_label_kl"].temperature == 2.0


GLMD = RECIPES_DIR / "glmd-pretrain.yaml"
WORD = "phases.0.terms.word_kl"


def test_word_kl_divergence_and_its_parameter_load_from_set():
    r = load_recipe(GLMD, sets=[f"{WORD}.divergence=jsd", f"{WORD}.beta=0.25"])
    validate(r, needs_data=False)
    p = r.phases[0].terms["word_kl"]
    assert (p.divergence, p.beta, p.alpha) == ("jsd", 0.25, None)
    again = yaml.safe_load(to_yaml(r))["phases"][0]["terms"]["word_kl"]
    assert again["divergence"] == "jsd" and again["beta"] == 0.25 and again["alpha"] is None
    p = load_recipe(GLMD).phases[0].terms["word_kl"]
    assert (p.divergence, p.beta, p.alpha) == ("forward_kl", None, None)


@pytest.mark.parametrize(
    ("sets", "problem"),
    [
        (["divergence=bogus"], "divergence must be one of forward_kl, reverse_kl, jsd, tvd"),
        (["divergence=reverse_kl", "beta=0.5"], "beta must be left out: only jsd takes it"),
        (["divergence=jsd", "alpha=0.5"], "alpha must be left out: only skew_kl takes it"),
        (["divergence=jsd", "beta=1.5"], "beta must be in (0, 1)"),
        (["divergence=skew_kl", "alpha=-1"], "alpha must be in [0, 1]"),
    ],
)
def test_bad_word_kl_divergence_is_one_problem(sets, problem):
    r = load_recipe(GLMD, sets=[f"{WORD}.{s}" for s in sets])
    with pytest.raises(DistillError) as e:
        validate(r, needs_data=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.count(f"{WORD}.") == 1
    assert f"{WORD}.{problem}" in msg
