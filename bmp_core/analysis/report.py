"""One self-contained ``report.html`` for an output: summary, counts, failures, histograms, policy, samples, eval.

With an export policy (``bmp-label report`` always passes one: the backend's default or the given
one, as ``bmp-label export`` would apply it), the ``policy`` section counts the people kept / ignored /
dropped per reason and per image exactly as ``export.json`` does (the same ``iter_export_shards`` and
``ExportTally``), the histograms draw its thresholds, and the samples are drawn as a trainer gets them
(``viz.draw_decided``). The ``counts`` section stays the raw output's.

Everything is inline (CSS, PNG/JPEG as base64 ``data:`` URIs, no script or font from the network),
so the file can be mailed or opened from S3 offline. Sections carry stable ids (``summary``,
``counts``, ``failures``, ``histograms``, ``samples``, ``evaluation``) that the Chromium test checks.
matplotlib is imported inside the plotting function only (it is an optional dependency and slow to
import).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc

from bmp_core.output.reader import JobOutput, image_labels, read_image_rgb

logger = logging.getLogger(__name__)

SECTION_IDS = ("summary", "counts", "failures", "histograms", "policy", "samples", "evaluation")
MAX_POLICY_IMAGE_ROWS = 200  # images listed in the per-image policy table; the totals are always complete
MAX_FAILED_ROWS = 200  # failed images listed in the table; the count is always complete
HEADER_RGB = (31, 42, 68)  # the page's header bar colour (the Chromium test looks for it)

_CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;background:#f6f7f9}
header{background:rgb(%HEADER%);color:#fff;padding:18px 28px}
header h1{margin:0;font-size:24px} header p{margin:4px 0 0;opacity:.8;font-size:13px}
main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border-radius:8px;padding:14px 20px;margin:16px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:18px;margin:4px 0 12px}
table{border-collapse:collapse;font-size:13px} td,th{padding:4px 10px;border-bottom:1px solid #e3e5e8;text-align:left}
th{background:#f0f2f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
figure{margin:0} figure img{width:100%;border-radius:4px} figcaption{font-size:12px;color:#555;margin-top:3px}
.note{color:#666;font-size:13px} .err{color:#b00020} pre{font-size:12px;background:#f6f7f9;padding:8px;overflow:auto}
"""
_CSS = _CSS.replace("%HEADER%", ",".join(map(str, HEADER_RGB)))


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]], numeric_from: int = 99) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header) if any(header) else ""
    body = "".join(
        "<tr>" + "".join(f"<td class='num'>{_esc(c)}</td>" if i >= numeric_from else f"<td>{_esc(c)}</td>"
                         for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _section(section_id: str, title: str, content: str) -> str:
    return f"<section id='{section_id}'><h2>{_esc(title)}</h2>{content}</section>"


def summary_section(run_info: dict[str, Any] | None) -> str:
    """Input, output, timings, throughput and versions from ``run.json``."""
    if run_info is None:
        return _section("summary", "Run summary", "<p class='note'>No run.json: the job has not finished.</p>")
    rows = [[k, run_info.get(k)] for k in ("input", "output") if k in run_info]
    if run_info.get("started_unix"):
        started = datetime.datetime.fromtimestamp(run_info["started_unix"], tz=datetime.timezone.utc)
        rows.append(["started (UTC)", started.strftime("%Y-%m-%d %H:%M:%S")])
    for key, seconds in (run_info.get("timings_s") or {}).items():
        rows.append([f"time: {key}", f"{seconds:.1f} s"])
    for key, value in (run_info.get("counts") or {}).items():
        if isinstance(value, (int, float)):
            rows.append([f"job: {key.replace('_', ' ')}", value])
    if run_info.get("throughput_images_per_s"):
        rows.append(["throughput", f"{run_info['throughput_images_per_s']:.2f} images/s"])
    versions = ", ".join(f"{k} {v}" for k, v in (run_info.get("versions") or {}).items())
    if versions:
        rows.append(["versions", versions])
    config = json.dumps(run_info.get("config", {}), indent=1)
    content = _table(["", ""], rows) + f"<details><summary>resolved config</summary><pre>{_esc(config)}</pre></details>"
    return _section("summary", "Run summary", content)


def count_rows(output: JobOutput) -> list[list[Any]]:
    """``[name, value]`` rows: images, failures, instances, people per image, per pass, prompting."""
    images, inst = output.images, output.instances
    ok = images.filter(pc.equal(images.column("status"), "ok"))
    per_image = ok.column("num_instances").to_numpy()
    rows: list[list[Any]] = [
        ["images", images.num_rows],
        ["images labeled", ok.num_rows],
        ["images failed", images.num_rows - ok.num_rows],
        ["images with nobody found", int((per_image == 0).sum())],
        ["people (instances)", inst.num_rows],
    ]
    if len(per_image):
        rows.append(["people per labeled image: mean / median / max",
                     f"{per_image.mean():.2f} / {np.median(per_image):.0f} / {per_image.max()}"])
    if inst.num_rows:
        iteration = inst.column("iteration").to_numpy()
        for k in range(int(iteration.max()) + 1):
            rows.append([f"people found in pass {k + 1}", int((iteration == k).sum())])
        prompted = inst.column("prompted").to_numpy(zero_copy_only=False)
        rows.append(["people refined by SAM (prompted)", f"{int(prompted.sum())} ({prompted.mean():.0%})"])
    return rows


def failures_section(output: JobOutput) -> str:
    """The failed images with their reasons (first ``MAX_FAILED_ROWS``)."""
    failed = output.images.filter(pc.not_equal(output.images.column("status"), "ok"))
    if failed.num_rows == 0:
        return _section("failures", "Failed images", "<p class='note'>None: every image was labeled.</p>")
    rows = [list(r) for r in zip(*(failed.column(c).to_pylist() for c in ("image_id", "uri", "error")), strict=True)]
    more = failed.num_rows - MAX_FAILED_ROWS
    tail = f"<p class='note'>... and {more} more (errors.csv has them all).</p>" if more > 0 else ""
    content = f"<p class='err'>{failed.num_rows} image(s) failed.</p>" + _table(
        ["image_id", "uri", "reason"], rows[:MAX_FAILED_ROWS]) + tail
    return _section("failures", "Failed images", content)


def histograms_png(output: JobOutput, policy: Any = None) -> bytes:
    """PNG of five histograms: people per image, detector, pose and SAM scores, mask areas.

    With an export ``policy`` (``bmp_core.output.export.policy.ExportPolicy``), each score's minimum
    is drawn as a dashed line and the title says how many people fall below it.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and CI
    import matplotlib.pyplot as plt

    ok = output.images.filter(pc.equal(output.images.column("status"), "ok"))
    per_image = ok.column("num_instances").to_numpy()
    inst = output.instances
    panels = [
        ("people per image", per_image, np.arange(-0.5, max(int(per_image.max(initial=0)), 1) + 1.5, 1.0), None),
        ("detector score", inst.column("det_score").to_numpy(), np.linspace(0, 1, 21),
         policy.min_det_score if policy else None),
        ("pose score (mean keypoint score)", inst.column("pose_score").to_numpy(), np.linspace(0, 1, 21),
         policy.min_pose_score if policy else None),
        ("SAM score (predicted IoU)", inst.column("sam_score").drop_null().to_numpy(), np.linspace(0, 1, 21),
         policy.min_sam_score if policy else None),
    ]
    # Mask areas span orders of magnitude: drawn as log10(1 + pixels), the threshold likewise.
    log_area = np.log10(1.0 + inst.column("mask_area").to_numpy().astype(np.float64))
    top = max(float(log_area.max(initial=0)), 1.0)
    panels.append(("mask area, log10(1 + pixels)", log_area, np.linspace(0, top, 21),
                   np.log10(1.0 + policy.min_mask_area_px) if policy else None))
    fig, axes = plt.subplots(1, len(panels), figsize=(20, 3.2), dpi=90)
    for ax, (title, values, bins, thr) in zip(axes, panels, strict=True):
        ax.hist(values, bins=bins, color="#3b6fd8", edgecolor="white")
        if thr:
            ax.axvline(thr, color="#d62728", linestyle="--", linewidth=1.5)
            shown = f"{policy.min_mask_area_px} px" if title.startswith("mask area") else f"{thr:g}"
            title = f"{title}\nmin {shown}: {int((values < thr).sum())} below"
        ax.set_title(f"{title} (n={len(values)})", fontsize=10)
        ax.tick_params(labelsize=8)
    fig.tight_layout()

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def policy_rows(output: JobOutput, policy: Any) -> list[list[Any]]:
    """[threshold, value, people below it] for each score/area minimum of an export policy, from the
    summary columns (each person counted under every threshold it fails, unlike ``export.json``'s
    first-reason counts); plus the people of ``ok`` images the whole policy would not keep."""
    inst = output.instances
    ok_ids = pc.is_in(inst.column("image_id"), value_set=output.images.filter(
        pc.equal(output.images.column("status"), "ok")).column("image_id").combine_chunks())
    inst = inst.filter(ok_ids)
    sam = inst.column("sam_score").to_numpy(zero_copy_only=False)
    rows = []
    checks = (
        ("min_det_score", policy.min_det_score, inst.column("det_score").to_numpy(zero_copy_only=False)),
        ("min_pose_score", policy.min_pose_score, inst.column("pose_score").to_numpy(zero_copy_only=False)),
        ("min_sam_score", policy.min_sam_score, np.nan_to_num(sam.astype(np.float32), nan=-1.0)),
        ("min_mask_area_px", policy.min_mask_area_px, inst.column("mask_area").to_numpy(zero_copy_only=False)),
    )
    failed = np.zeros(inst.num_rows, bool)
    for name, thr, values in checks:
        below = values < thr
        failed |= below
        rows.append([name, thr, int(below.sum())])
    rows.append(["not kept by these thresholds", "", int(failed.sum())])
    rows.append(["people in ok images", "", inst.num_rows])
    return rows


@dataclass(frozen=True)
class PolicyCounts:
    """What an export with the policy would do, counted as ``export.json`` counts it.

    Attributes:
        tally: the export's ``ExportTally`` (kept / ignored / dropped, per reason, per split).
        per_image: ``(image_id, uri, kept, ignored, dropped)`` of every exported (``ok``) image.
    """

    tally: Any
    per_image: list[tuple[int, str, int, int, int]]


def policy_counts(output: JobOutput, policy: Any) -> PolicyCounts:
    """Apply ``policy`` to every committed shard, as an export does (one shard in memory at a time).

    Raises:
        OutputStateError: the output has no plan (a hand-made output): nothing an export could read.
    """
    from bmp_core.output.export.manifest import ExportTally
    from bmp_core.output.export.policy import Decision
    from bmp_core.output.export.source import iter_export_shards
    from bmp_core.output.store import OutputStore

    tally, per_image = ExportTally(), []
    for shard in iter_export_shards(OutputStore(output.uri), policy):
        tally.add_shard(shard)
        for i, (image_id, uri) in enumerate(zip(shard.image_ids, shard.uris, strict=True)):
            d = shard.decisions.decision[int(shard.starts[i]):int(shard.starts[i + 1])]
            per_image.append((image_id, uri, *(int((d == k).sum()) for k in
                                               (Decision.KEEP, Decision.IGNORE, Decision.DROP))))
    return PolicyCounts(tally, sorted(per_image))


def policy_section(output: JobOutput, policy: Any, policy_source: str | None = None,
                   counts: PolicyCounts | None = None) -> str:
    """The policy's values, the people kept / ignored / dropped per reason and per image."""
    from bmp_core.output.export.policy import REASONS

    if policy is None:
        return _section("policy", "Export policy", "<p class='note'>No policy given: the report shows the raw "
                        "output (every person).</p>")
    source = f" ({_esc(policy_source)})" if policy_source else ""
    values = ", ".join(f"{k} {v:g}" for k, v in policy.to_dict().items() if isinstance(v, (int, float)))
    note = (f"<p class='note'>Policy{source}: {_esc(values)}. A person passing every threshold is kept (a training "
            "target, coloured in the samples); one failing a threshold becomes an ignore region (grey hatching), "
            "or is dropped when its mask is empty. Counted as <code>bmp-label export</code> with the same options "
            "counts them in export.json (the first threshold a person fails is its reason); the Counts section above "
            "is the raw output.</p>")
    if counts is None:
        return _section("policy", "Export policy", note + "<p class='err'>No plan: cannot apply the policy.</p>")
    people = counts.tally.people
    totals = _table(["people", "count"], [[k, people[k]] for k in ("kept", "ignored", "dropped")]
                    + [["total", sum(people.values())]], numeric_from=1)
    reasons = _table(["first failed threshold", "ignored", "dropped"],
                     [[r, counts.tally.ignored_by_reason[r], counts.tally.dropped_by_reason[r]] for r in REASONS],
                     numeric_from=1)
    rows = [[i, uri.replace("\\", "/").rsplit("/", 1)[-1], k, ig, d]
            for i, uri, k, ig, d in counts.per_image[:MAX_POLICY_IMAGE_ROWS]]
    more = len(counts.per_image) - MAX_POLICY_IMAGE_ROWS
    tail = f"<p class='note'>... and {more} more images.</p>" if more > 0 else ""
    below = _table(["threshold", "value", "people below"], policy_rows(output, policy), numeric_from=1)
    content = (note + "<div class='grid'>" + f"<div>{totals}</div><div>{reasons}</div></div>"
               + "<h3>Per image</h3>" + _table(["image_id", "file", "kept", "ignored", "dropped"], rows, numeric_from=2)
               + tail + "<details><summary>people below each threshold (every one it fails)</summary>"
               + below + "</details>")
    return _section("policy", "Export policy: kept / ignored / dropped", content)


def pick_samples(output: JobOutput, num_samples: int) -> list[int]:
    """Image ids for the overlay grid: the most crowded image, then labeled images evenly spread.

    Deterministic, so two reports of the same output show the same pictures.
    """
    ok = output.images.filter(pc.equal(output.images.column("status"), "ok"))
    ids = np.asarray(ok.column("image_id").to_pylist(), np.int64)
    if num_samples <= 0 or len(ids) == 0:
        return []
    counts = ok.column("num_instances").to_numpy()
    chosen = [int(ids[int(np.argmax(counts))])]
    for i in np.linspace(0, len(ids) - 1, num=min(num_samples, len(ids))).round().astype(int):
        if int(ids[i]) not in chosen:
            chosen.append(int(ids[i]))
    return chosen[:num_samples]


def samples_section(output: JobOutput, num_samples: int, thumb_side: int = 480, policy: Any = None) -> str:
    """A grid of overlays of sample images, as inline JPEGs: drawn by ``policy`` (``viz.draw_decided``),
    or every person without one."""
    from tqdm import tqdm

    from bmp_core.analysis import viz
    from bmp_core.output.export.policy import Decision, decide

    figures = []
    for image_id in tqdm(pick_samples(output, num_samples), desc="report samples", unit="img", leave=False):
        row = output.images.filter(pc.equal(output.images.column("image_id"), image_id)).to_pylist()[0]
        try:
            image_rgb = read_image_rgb(row["uri"])
        except (OSError, ValueError) as err:  # the input may have moved since the run
            figures.append(f"<figure><figcaption class='err'>{_esc(row['uri'])}: {_esc(err)}</figcaption></figure>")
            continue
        table = output.instances_of(image_id)
        labels = image_labels(table, row["height"], row["width"])
        if policy is None:
            overlay, what = viz.draw_labels(image_rgb, labels), f"{len(labels.masks)} people"
        else:
            d = decide(table, policy).decision
            keep, ignore = d == Decision.KEEP, d == Decision.IGNORE
            style = viz.DrawStyle(keypoint_thr=policy.keypoint_thr)
            overlay = viz.draw_decided(image_rgb, labels, keep, ignore, style)
            what = f"{int(keep.sum())} kept, {int(ignore.sum())} ignored, {int((d == Decision.DROP).sum())} dropped"
        overlay = viz.thumbnail(overlay, thumb_side)
        src = _data_uri(viz.encode_image(overlay, "JPEG", 85), "image/jpeg")
        name = row["uri"].replace("\\", "/").rsplit("/", 1)[-1]
        figures.append(f"<figure><img alt='{_esc(name)}' src='{src}'>"
                       f"<figcaption>#{image_id} {_esc(name)}: {what}</figcaption></figure>")
    if not figures:
        return _section("samples", "Sample overlays", "<p class='note'>No labeled image.</p>")
    return _section("samples", "Sample overlays", f"<div class='grid'>{''.join(figures)}</div>")


def evaluation_section(eval_info: dict[str, Any] | None) -> str:
    """The AP table of ``eval.json``, or how to make one."""
    if eval_info is None:
        return _section("evaluation", "Evaluation",
                        "<p class='note'>No eval.json. Run <code>bmp-label eval OUTPUT --gt GT.json</code>.</p>")
    from bmp_core.analysis.evaluation import EvaluationResult, table_rows
    from bmp_core.analysis.visibility import describe

    result = EvaluationResult.from_dict(eval_info)
    header, rows = table_rows(result)
    im = result.images
    note = (f"<p class='note'>Ground truth {_esc(result.gt or '?')}: {im.matched} images matched, "
            f"{im.num_missing_in_gt} of the output not in the GT, {im.num_missing_in_output} of the GT not "
            f"in the output.</p>")
    visibility_line = describe(result.visibility)
    if visibility_line:
        note += f"<p class='note'>{_esc(visibility_line)}</p>"
    return _section("evaluation", "Evaluation (COCO AP/AR)", note + _table(header, rows, numeric_from=2))


def build_report(output: JobOutput, num_samples: int = 12, policy: Any = None,
                 policy_source: str | None = None) -> str:
    """The whole HTML page.

    Args:
        output: the loaded output (``bmp_core.output.reader.load_output``).
        num_samples: overlays in the sample grid.
        policy: an ``ExportPolicy``: the ``policy`` section counts by it (as export.json would), its
            thresholds are drawn on the histograms and the samples drawn by it. None: raw output only.
        policy_source: where the policy came from (``ResolvedPolicy.source``), shown with it.

    Returns:
        HTML text, self-contained.
    """
    from bmp_core.output.store import OutputStateError

    counts = None
    if policy is not None:
        try:
            counts = policy_counts(output, policy)
        except OutputStateError as err:
            logger.warning("report: the policy is not applied: %s", err)
    hist = _data_uri(histograms_png(output, policy), "image/png")
    parts = [
        summary_section(output.run_info),
        _section("counts", "Counts (raw output)", _table(["", ""], count_rows(output), numeric_from=1)),
        failures_section(output),
        _section("histograms", "Histograms", f"<img style='max-width:100%' alt='histograms' src='{hist}'>"),
        policy_section(output, policy, policy_source, counts),
        samples_section(output, num_samples, policy=policy),
        evaluation_section(output.eval_info),
    ]
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>bmp-label report: {_esc(output.uri)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>bmp-label report</h1><p>{_esc(output.uri)} &middot; generated {generated}</p></header>"
        f"<main>{''.join(parts)}</main></body></html>"
    )
