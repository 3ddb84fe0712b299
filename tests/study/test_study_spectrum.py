"""The study's spectrum stage and the report's spectral-anatomy and honest-SSA sections."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tunelens.stats.spectrum import SPECTRUM_COLUMNS
from tunelens.study.config import StudyConfig


def test_spectrum_stage_writes_its_files(study: Path) -> None:
    with (study / "spectrum" / "spectrum.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == SPECTRUM_COLUMNS and {r["model"] for r in rows} == {"med", "math"}
    summary = json.loads((study / "spectrum" / "summary.json").read_text())
    assert summary["options"]["intruder_k"] == 10 and summary["cache"]["misses"] == 0  # subspace's bases, cached
    state = json.loads((study / "study.json").read_text())
    assert state["stages"]["spectrum"]["state"] == "done"


def test_report_reads_ssa_from_ratios_and_shows_the_spectral_anatomy(study: Path) -> None:
    page = (study / "report.html").read_text()
    assert '<section id="spectrum">' in page and '<section id="subspace">' in page
    assert "lower in MLP than attention, as in the paper" not in page  # the old reading from absolute shares
    assert "random-τ baseline" in page and "ratio ± 3σ of chance" in page
    assert "intruder dimension" in page and "effective rank" in page
    figs = {p.name for p in (study / "figures").glob("*.png")}
    assert {"spectrum_effective_rank.png", "spectrum_intruders.png", "table4_subspace_alignment.png"} <= figs


def test_spectrum_section_of_the_config_is_validated(inputs: Path) -> None:
    import yaml

    from tunelens.errors import TunelensError

    data = yaml.safe_load((inputs / "study.yaml").read_text())
    cfg = StudyConfig.from_dict({**data, "spectrum": {"intruder_k": 5, "amp_rank": 8}}, root=inputs)
    assert (cfg.spectrum.intruder_k, cfg.spectrum.amp_rank, cfg.spectrum.intruder_eps) == (5, 8, 0.5)
    assert "spectrum" in cfg.stages
    for bad in ({"intruder_k": 0}, {"intruder_eps": 2}, {"amp_rank": "x"}, {"rank": 3}, {"per_head": "yes"}):
        with pytest.raises(TunelensError, match="spectrum"):
            StudyConfig.from_dict({**data, "spectrum": bad}, root=inputs)
