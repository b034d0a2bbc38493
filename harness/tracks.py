"""Official leaderboard tracks and the submissions scored on them.

A track (`leaderboard/tracks/<track>.yaml`) is a spec without poisons: data set and subset, task,
backbone, training recipe, SAL settings, seeds and the defences run. A submission is a small file
naming a track and bringing only what is the submitter's: the poisons (name, label, params),
optionally extra defences, and for a third-party method the package that provides it:

    track: digits-small-cnn
    name: my-noise                  # optional: the submission's name (default: its folder's)
    poisons:
      - {name: my-poison, label: my-poison, params: {epsilon: 0.0314}}
    defences: [jpeg]                # optional, beside the track's own
    package: {wheel: harness_my_poison-0.1.0-py3-none-any.whl}   # or {sdist: ...},
                                    # or {requirement: "harness-my-poison==0.1.0"}

Everything else is the track's: a submission that sets any other field (`training:` to shorten a
run, say) is refused, with the file and line, so an entry can only land in the track it names.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import SpecError
from harness.names import SLUG
from harness.spec import ArmComponent, PoisonComponent
from harness.specfile import SpecSource, read_spec_file

SUBMISSION_FIELDS = ("track", "name", "description", "poisons", "defences", "package")
REQUIREMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")


class Package(BaseModel):
    """Where a third-party method comes from: a wheel or sdist in the submission's folder, or a
    requirement pinned to one exact version."""

    model_config = ConfigDict(extra="forbid")
    wheel: str | None = Field(default=None, description="a .whl file inside the submission folder")
    sdist: str | None = Field(
        default=None, description="a .tar.gz sdist inside the submission folder"
    )
    requirement: str | None = Field(
        default=None, description="name==version, from the package index"
    )

    @field_validator("wheel", "sdist")
    @classmethod
    def _a_file_name(cls, value: str | None) -> str | None:
        if value is not None and (Path(value).name != value or value.startswith(".")):
            raise ValueError("must be a file name inside the submission folder (no path)")
        return value

    @field_validator("requirement")
    @classmethod
    def _pinned(cls, value: str | None) -> str | None:
        if value is not None and not REQUIREMENT.match(value):
            raise ValueError("must pin one exact version, as name==1.2.3")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Package:
        given = [k for k in ("wheel", "sdist", "requirement") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of wheel, sdist or requirement")
        return self


class Submission(BaseModel):
    model_config = ConfigDict(extra="forbid")
    track: str = Field(pattern=SLUG, description="the official track it is scored on")
    name: str | None = Field(default=None, pattern=SLUG, description="default: the folder's name")
    description: str = ""
    poisons: list[PoisonComponent] = Field(min_length=1)
    defences: list[ArmComponent] = Field(default_factory=list)
    package: Package | None = None


class SubmissionStatus(BaseModel):
    """What became of one submission: scored (its entries filed) or failed (why, and the log's end)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(description="the submission's folder name")
    track: str | None = None
    digest: str = Field(
        description="SHA-256 over the submission folder's files: unchanged means not rescored"
    )
    status: Literal["scored", "failed"]
    reason: str | None = None
    log_tail: str | None = None
    entries: list[str] = Field(default_factory=list, description="entry files filed")
    clean_run: str | None = Field(
        default=None, description="the track's clean run the UD is scored against"
    )
    sandboxed: bool = False
    seconds: float = 0.0
    scored_at: str = ""


def is_submission(data: Any) -> bool:
    """A spec file with a top-level `track:` is a submission, not a spec."""
    return isinstance(data, dict) and "track" in data


def read_submission(path: Path) -> tuple[Submission, SpecSource]:
    """The submission, checked field by field; a field a track fixes is refused with its line."""
    source = read_spec_file(path)
    data = source.data
    problems = []
    for key in data:
        if key not in SUBMISSION_FIELDS:
            problems.append(
                f"{source.where((key,), key=True)}: {key}: fixed by the track {data.get('track')!r}; a "
                f"submission sets only {', '.join(SUBMISSION_FIELDS)}"
            )
    try:
        submission = Submission.model_validate(
            {k: v for k, v in data.items() if k in SUBMISSION_FIELDS}
        )
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            problems.append(f"{source.where(loc)}: {'.'.join(map(str, loc))}: {err['msg']}")
        submission = None
    if problems:
        raise SpecError("\n".join(problems))
    assert submission is not None
    return submission, source


def track_path(tracks_dir: Path, name: str) -> Path:
    return Path(tracks_dir) / f"{name}.yaml"


def read_track(tracks_dir: Path, name: str) -> SpecSource:
    """A track's spec data, checked: it has no poisons and is named after its file."""
    path = track_path(tracks_dir, name)
    if not path.is_file():
        known = sorted(p.stem for p in Path(tracks_dir).glob("*.yaml"))
        raise SpecError(f"no track {name!r} in {tracks_dir} (tracks: {', '.join(known) or 'none'})")
    source = read_spec_file(path)
    if source.data.get("poisons"):
        raise SpecError(
            f"{source.where(('poisons',))}: a track holds no poisons; submissions bring them"
        )
    if source.data.get("name") != name:
        raise SpecError(
            f"{source.where(('name',))}: name: a track is named after its file ({name!r})"
        )
    return source


def compose(submission: Submission, track: SpecSource, submission_name: str) -> dict[str, Any]:
    """The full spec of a submission on its track: the track's fields, the submission's poisons,
    the track's defences followed by the submission's extra ones."""
    data = copy.deepcopy(track.data)
    data["name"] = f"{submission.track}.{submission_name}"
    data["description"] = (
        submission.description or f"submission {submission_name} on {submission.track}"
    )
    data["poisons"] = [p.model_dump(mode="json", exclude_none=True) for p in submission.poisons]
    track_defences = data.get("defences") or ["none"]
    names = {d if isinstance(d, str) else d.get("label") or d["name"] for d in track_defences}
    extra = [
        d.model_dump(mode="json", exclude_none=True)
        for d in submission.defences
        if d.key not in names
    ]
    data["defences"] = [*track_defences, *extra]
    data.pop("output", None)
    return data


def clean_spec(track: SpecSource) -> dict[str, Any]:
    """The track's clean arms alone: what every submission of the track is scored against."""
    data = copy.deepcopy(track.data)
    data["poisons"] = []
    data.pop("output", None)
    return data


class ComposedSource(SpecSource):
    """A composed spec's source: errors in the submission's poisons and extra defences point at
    the submission file, everything else at the track file."""

    def __init__(
        self, data: dict[str, Any], track: SpecSource, submission: SpecSource, track_defences: int
    ) -> None:
        super().__init__(track.path, data, track.positions, track.key_positions)
        self.track = track
        self.submission = submission
        self.track_defences = track_defences

    def where(self, loc, *, key: bool = False) -> str:
        loc = tuple(loc)
        if loc and loc[0] == "poisons":
            return self.submission.where(loc, key=key)
        if (
            len(loc) > 1
            and loc[0] == "defences"
            and isinstance(loc[1], int)
            and loc[1] >= self.track_defences
        ):
            return self.submission.where(
                ("defences", loc[1] - self.track_defences, *loc[2:]), key=key
            )
        return self.track.where(loc, key=key)


def composed_source(
    submission: Submission, submission_source: SpecSource, track: SpecSource, submission_name: str
) -> ComposedSource:
    data = compose(submission, track, submission_name)
    return ComposedSource(
        data, track, submission_source, len(track.data.get("defences") or ["none"])
    )
