"""The ground floor's names: scenarios, groups, sites, the stages of a round, and the workspace's
fixed file names.

A *scenario* is a set of cameras sharing one kind of heterogeneity; inside it each camera belongs
to a *group* (a homogeneous subset).  Known from the camera, never from identity labels
(DESIGN.md section 1).  A *site* is where an ingested folder was filmed: people are shared only
within a site.

Every layer may import this module; it imports nothing of the engine but :mod:`.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ItkmError

SCENARIOS: tuple[str, ...] = ("visible-infrared", "cross-resolution", "clothing-change", "cross-camera")
GROUPS: tuple[str, ...] = ("visible", "infrared", "high-res", "low-res", "all")

#: Scenarios whose cameras split into two groups, and those groups (side A, side B).
TWO_GROUP: dict[str, tuple[str, str]] = {
    "visible-infrared": ("visible", "infrared"),
    "cross-resolution": ("high-res", "low-res"),
}


def allowed_groups(scenario: str) -> tuple[str, ...]:
    return TWO_GROUP.get(scenario, ("all",))


def default_group(scenario: str) -> str:
    return allowed_groups(scenario)[0]


def validate(scenario: str, group: str) -> None:
    """Raise :class:`ItkmError` unless ``group`` is a valid group of ``scenario``."""
    if scenario not in SCENARIOS:
        raise ItkmError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
    if group not in allowed_groups(scenario):
        raise ItkmError(
            f"group {group!r} is not part of scenario {scenario!r}; "
            f"choose one of: {', '.join(allowed_groups(scenario))}"
        )


def group_key(scenario: str, group: str) -> str:
    """Pseudo-labels are computed per group key."""
    return f"{scenario}/{group}"


#: The site of a source nobody named (one site for everything).
DEFAULT_SITE = "default"

#: Start of a camera's flag when ingest found it low-res in a scenario without resolution groups
#: (``data.guess.assign_scenarios``: it keeps its group; the evaluation scores it low-res -> high-res).
LOW_RES_FLAG = "low-res"
#: How a camera's flags are joined into its one flag text.
FLAG_SEPARATOR = "; "


def has_low_res_flag(flag: str | None) -> bool:
    """Whether a camera's flag text says it is low-res (:data:`LOW_RES_FLAG`)."""
    return bool(flag) and any(part.startswith(LOW_RES_FLAG) for part in flag.split(FLAG_SEPARATOR))

@dataclass(frozen=True)
class StageLabel:
    """How one stage of a round is named, and its share of the round's progress bar."""

    name: str  # in progress events, the epoch log, checkpoints and config sections ("stage1")
    numeral: str  # the paper's numbering ("I"), e.g. on the training chart's stage marks
    title: str  # what it does ("homogeneous learning")
    span: tuple[float, float]  # (lo, hi) of a round's progress bar

    @property
    def label(self) -> str:
        return f"Stage {self.numeral} - {self.title}"


#: The stages of a round, in their order.  Stage II is cheap (features once, the text tower only),
#: so its share of the progress bar is small.
STAGE_LABELS: dict[str, StageLabel] = {s.name: s for s in (
    StageLabel("stage1", "I", "homogeneous learning", (0.0, 0.45)),
    StageLabel("stage2", "II", "text knowledge", (0.45, 0.6)),
    StageLabel("stage3", "III", "heterogeneous matching", (0.6, 1.0)),
)}

#: The workspace's settings file (``WS/config.toml``): written only by the training entry point.
CONFIG_FILE = "config.toml"
#: ``WS/checkpoints/progress.pt``: an unfinished round's last completed epoch.
PROGRESS_FILE = "progress.pt"
#: Per round (``WS/rounds/round_NNNN/``): ids, per-group ``labels`` and cross-group ``cross`` labels.
FINAL_LABELS_FILE = "final_labels.npz"
