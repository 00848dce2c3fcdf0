"""The blocks copied across scripts (DESIGN.md: self-contained scripts, duplication on purpose) stay identical: a
function or class of the same name has the same source in every script that defines it, so a diff between two scripts
shows only their methods, and a fix to one copy cannot silently miss the others."""

import ast
from collections import defaultdict

import pytest

from conftest import SCRIPTS

# names that are the same block wherever they appear; a script may leave one out, never change it
SHARED = [
    "make_env",
    "load_expert_info",
    "expert_command",
    "SHIPPED_EXPERTS",
    "missing_expert_hint",
    "load_demos",
    "normalized_score",
    "evaluate",
    "package_versions",
    "write_eval_row",
    "write_summary",
    "bf16_is_fast",
    "make_optimizer",
    "SoftQEnsemble",
    "RANDOM_RETURN_EPISODES",
    "RANDOM_RETURN_SEED",
    "demos_mean_return",
    "random_policy_returns",
    "demos_command",
    "ExpertPolicy",
    "rollout_episodes",
    "log_metrics",
    "exit_if_non_finite",
    "checkpoint_state",
    "load_checkpoint_state",
    "transition_rows",
]
# what load_expert_info calls, so a script that copies it must copy these too (a demos-only folder reaches them)
EXPERT_INFO_HELPERS = [
    "RANDOM_RETURN_EPISODES",
    "RANDOM_RETURN_SEED",
    "demos_mean_return",
    "random_policy_returns",
    "demos_command",
    "expert_command",
    "missing_expert_hint",
    "SHIPPED_EXPERTS",
    "make_env",
]


def top_level_sources(path):
    """name -> source of every top-level function, class and assignment of a script."""
    text = path.read_text()
    sources = {}
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            sources[node.name] = ast.get_source_segment(text, node)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            sources[node.targets[0].id] = ast.get_source_segment(text, node)
    return sources


SOURCES = {path.name: top_level_sources(path) for path in sorted(SCRIPTS.glob("*.py"))}


@pytest.mark.parametrize("name", SHARED)
def test_shared_block_is_identical_everywhere(name):
    variants = defaultdict(list)
    for script, sources in SOURCES.items():
        if name in sources:
            variants[sources[name]].append(script)
    assert variants, f"no script defines {name}"
    assert len(variants) == 1, f"{name} differs between " + " | ".join(", ".join(scripts) for scripts in variants.values())


@pytest.mark.parametrize("script", sorted(name for name, sources in SOURCES.items() if "load_expert_info" in sources))
def test_the_helpers_of_load_expert_info_come_with_it(script):
    missing = [name for name in EXPERT_INFO_HELPERS if name not in SOURCES[script]]
    assert not missing, f"{script} copies load_expert_info without {missing}"


def test_the_sac_scripts_share_the_sac_block():
    # nail.py's actor also returns the pre-tanh sample and its losses carry the reference term (tests/test_nail.py)
    for name in ("Actor", "soft_q_loss", "policy_loss", "alpha_loss", "sac_update"):
        assert SOURCES["sac.py"][name] == SOURCES["cfil.py"][name], name


# what a reader wades through least: the shared infrastructure, written once per script, in one marked block at the end
INFRASTRUCTURE = set(SHARED) - {
    "evaluate",
    "bf16_is_fast",
    "make_optimizer",
    "SoftQEnsemble",
    "ExpertPolicy",
    "rollout_episodes",
    "transition_rows",
}
INFRASTRUCTURE |= {"package_versions", "write_eval_row", "hardware_info", "write_summary", "exit_on_stop_signals"}


@pytest.mark.parametrize("script", sorted(name for name in SOURCES if name != "demos.py"))
def test_the_method_comes_first_and_the_infrastructure_last(script):
    """Args, then the method's own networks and losses (right after Args, under a banner), then the RL backbone and
    evaluation, then one marked block of shared infrastructure, then main: a reader meets the method first."""
    text = (SCRIPTS / script).read_text()
    lines = text.splitlines()
    body = ast.parse(text).body
    names = [node.name if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else None for node in body]
    args_end = body[names.index("Args")].end_lineno
    banners = [number for number, line in enumerate(lines, 1) if line.startswith("# ---")]
    assert banners and banners[0] > args_end, "no section banner after Args"
    assert all(not line.strip() for line in lines[args_end : banners[0] - 1]), "something between Args and the method's banner"
    (infrastructure_banner,) = [number for number in banners if "shared infrastructure" in lines[number - 1]]
    main = next(node.lineno for node in body if isinstance(node, ast.If))
    for node in body:
        name = node.name if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else getattr(node, "targets", [None])[0]
        name = getattr(name, "id", name)
        if name in INFRASTRUCTURE:
            assert infrastructure_banner < node.lineno < main, f"{script}: {name} outside the shared infrastructure block"
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            assert node.lineno < infrastructure_banner, f"{script}: {name} sits in the shared infrastructure block"
