"""The demo report's note on the sites' example deviation maps: where each site wrote them.

Only a simulation can write it: its orchestrator owns every site's folder and the server's run
folder. The maps themselves stay at the sites (`ndae.federation.site.example_maps`): the report
names each site's folder and how many maps it holds, and embeds none of them, so `report.html`,
the file meant to be shared, carries no patient's image and no subject id.
"""

from __future__ import annotations

from pathlib import Path

HEADING = "## Example deviation maps (written at each site, never sent)"


def example_maps_section(out: Path, cohort_dir: Path) -> str:
    """The section's Markdown for the sites of `cohort_dir/sites/` (folders shown relative to `out`)."""
    from ndae.federation.site.example_maps import EXAMPLES, SUFFIX, example_maps_dir

    rows = []
    for manifest in sorted(Path(cohort_dir).glob("sites/*/manifest.csv")):
        folder = example_maps_dir(manifest)
        count = len(list(folder.glob(f"*{SUFFIX}"))) if folder.is_dir() else 0
        shown = folder.relative_to(Path(out).resolve()) if folder.is_relative_to(Path(out).resolve()) else folder
        rows.append(f"| {manifest.parent.name} | {count} | " + (f"`{shown}/` |" if count else "— |"))
    return "\n".join([
        "", HEADING, "",
        f"Each site drew the maps of its {EXAMPLES} patients with the largest Mahalanobis deviation of z_sem: the "
        "patient's image minus the healthy brain the DAE's prior draws for their age and sex (x − x̂₀, the residual "
        "the `z_prior_*` scores average per region), on the DAE's slices, with a colourbar in image intensity. Each "
        "site wrote them into its own folder, as its node config allows (`example-maps`: on for a simulated node, off "
        "by default on a deployed SuperNode). No map left a site: this report says only where they are.", "",
        "| site | maps | folder (at the site) |", "|---|---|---|", *rows, ""])


def append_example_maps_section(out: str | Path, cohort_dir: str | Path) -> None:
    """Add (or replace) the section in `out/report.md` and write `report.html` again."""
    from ndae.io import atomic_write_text
    from ndae.reporting.html import write_report_html

    out = Path(out)
    report = out / "report.md"
    if not report.is_file():
        return
    text = report.read_text()
    if HEADING in text:  # a resumed run: the section of this run replaces the earlier one
        before, after = text.split(HEADING, 1)
        rest = after.split("\n## ", 1)
        text = before.rstrip() + ("\n\n## " + rest[1] if len(rest) > 1 else "")
    atomic_write_text(report, text.rstrip() + "\n" + example_maps_section(out, Path(cohort_dir)))
    write_report_html(report)
