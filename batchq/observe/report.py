"""`batchq report JOB -o FILE.png|FILE.html`: one picture of how a job ran.

Drawn from the batch_runs rows the workers write with each batch's results, so a report is
the same whoever asks and whenever: throughput over time, batch latency, padding
efficiency and each worker's share. The HTML file is self-contained (the figure inline as
SVG, plus the numbers as a table), so it can be mailed or attached to a ticket.
"""

from __future__ import annotations

import html
import io
import statistics
from dataclasses import dataclass
from pathlib import Path

from batchq.config import Settings, get_settings
from batchq.errors import ConfigError, NotNow
from batchq.observe.progress import percent
from batchq.store.reads import batch_records, job_view
from batchq.store.views import BatchRecord, JobView

FORMATS = (".png", ".html")


@dataclass(frozen=True)
class ReportData:
    job: JobView
    batches: list[BatchRecord]  # in the order they ended


def load(job_ref: str, settings: Settings | None = None) -> ReportData:
    settings = settings or get_settings()
    job = job_view(settings, job_ref)
    return ReportData(job, batch_records(settings, job.id))


def _throughput(batches: list[BatchRecord]) -> tuple[list[float], list[float]]:
    """Output tokens/s over time: each batch's tokens spread evenly over the span it ran,
    summed into equal time buckets (seconds since the first batch began). About one bucket
    per batch: finer shows the gaps between batches as zeros rather than the trend."""
    buckets = max(5, min(60, len(batches)))
    start = min(b.finished_at.timestamp() - b.seconds for b in batches)
    end = max(b.finished_at.timestamp() for b in batches)
    width = max(end - start, 1e-3) / buckets
    totals = [0.0] * buckets
    for b in batches:
        b_end = b.finished_at.timestamp() - start
        b_start = max(b_end - b.seconds, 0.0)
        span = max(b_end - b_start, 1e-9)
        for i in range(int(b_start // width), min(int(b_end // width), buckets - 1) + 1):
            overlap = min(b_end, (i + 1) * width) - max(b_start, i * width)
            if overlap > 0:
                totals[i] += b.completion_tokens * overlap / span
    return [(i + 0.5) * width for i in range(buckets)], [t / width for t in totals]


def summary(data: ReportData) -> list[tuple[str, str]]:
    job, batches = data.job, data.batches
    m, c = job.metrics, job.counts
    latencies = sorted(b.seconds for b in batches)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    variants = [("variant", f"{job.model} ({job.quant})")] if len(job.variants) <= 1 else [
        (f"variant {n}", f"{share.model} ({share.quant}): {share.counts.total} lines, "
                         f"{share.counts.succeeded} succeeded, {share.counts.failed} failed")
        for n, share in enumerate(job.variants, start=1)]
    return [
        ("job", job.id), *variants,
        ("status", job.status.value),
        ("lines", f"{c.total} total, {c.succeeded} succeeded, {c.failed} failed, "
                  f"{c.cancelled} cancelled"),
        ("batches", f"{len(batches)} on {len({b.worker for b in batches})} worker(s)"),
        ("tokens", f"{m.prompt_tokens} prompt, {m.completion_tokens} completion"),
        ("throughput", f"{m.tokens_per_second or '-'} output tok/s over the run"),
        ("batch latency", f"median {statistics.median(latencies):.2f} s, p95 {p95:.2f} s"),
        ("padding", f"prompt {percent(m.padding_efficiency)}, decode "
                    f"{percent(m.decode_efficiency)} of the slots paid for"),
    ]


def figure(data: ReportData):
    import matplotlib

    matplotlib.use("Agg")  # no screen needed, ever
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in the HTML: searchable
    import matplotlib.pyplot as plt

    batches = data.batches
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), layout="constrained")
    job = data.job
    fig.suptitle(f"batchq job {job.id[:12]} · {job.model} ({job.quant}) · "
                 f"{job.status} · {job.counts.total} lines", fontsize=12)

    ax = axes[0][0]
    xs, ys = _throughput(batches)
    ax.plot(xs, ys, color="#2b6cb0")
    ax.fill_between(xs, ys, alpha=0.2, color="#2b6cb0")
    ax.set(title="Throughput over time", xlabel="seconds since the first batch",
           ylabel="output tokens / s")

    ax = axes[0][1]
    ax.hist([b.seconds for b in batches], bins=min(30, max(5, len(batches) // 3)),
            color="#805ad5")
    median = statistics.median(b.seconds for b in batches)
    ax.axvline(median, color="black", linestyle="--", label=f"median {median:.2f} s")
    ax.legend()
    ax.set(title="Batch latency", xlabel="seconds per batch", ylabel="batches")

    ax = axes[1][0]
    index = range(1, len(batches) + 1)
    ax.plot(index, [100 * b.prompt_tokens / b.padded_prompt_tokens if b.padded_prompt_tokens
                    else 100 for b in batches], ".", label="prompt (real / padded tokens)")
    ax.plot(index, [100 * b.completion_tokens / b.decode_slots if b.decode_slots else 100
                    for b in batches], ".", label="decode (tokens / row-steps)")
    ax.set(title="Padding efficiency per batch", xlabel="batch, in the order it ended",
           ylabel="% of the work paid for that was useful", ylim=(0, 105))
    ax.legend(loc="lower right")

    ax = axes[1][1]
    lines: dict[str, int] = {}
    tokens: dict[str, int] = {}
    for b in batches:
        lines[b.worker] = lines.get(b.worker, 0) + b.rows
        tokens[b.worker] = tokens.get(b.worker, 0) + b.completion_tokens
    workers = sorted(lines, key=lambda worker: lines[worker])
    total_lines, total_tokens = sum(lines.values()) or 1, sum(tokens.values()) or 1
    y = range(len(workers))
    ax.barh([i + 0.2 for i in y], [100 * lines[w] / total_lines for w in workers], height=0.4,
            label="lines")
    ax.barh([i - 0.2 for i in y], [100 * tokens[w] / total_tokens for w in workers],
            height=0.4, label="output tokens")
    ax.set_yticks(list(y), [_short(w) for w in workers], fontsize=8)
    ax.set(title="Share per worker", xlabel="% of the job", xlim=(0, 115))
    ax.legend(loc="upper right", fontsize=8)
    return fig


def _short(worker: str, width: int = 34) -> str:
    return worker if len(worker) <= width else "…" + worker[-(width - 1):]


def write(job_ref: str, path: str, settings: Settings | None = None) -> ReportData:
    """Draw JOB's report into `path` (.png or .html). Raises NotNow before any batch ended."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"{path}: a report is a .png or an .html file")
    data = load(job_ref, settings)
    if not data.batches:
        raise NotNow(f"job {data.job.id} has no finished batch yet: nothing to draw "
                     "(is a worker running for its variant?)")
    fig = figure(data)
    try:
        if suffix == ".png":
            fig.savefig(path, dpi=110)
        else:
            svg = io.StringIO()
            fig.savefig(svg, format="svg")
            Path(path).write_text(_html(data, svg.getvalue()), encoding="utf-8")
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return data


def _html(data: ReportData, svg: str) -> str:
    rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                     for k, v in summary(data))
    svg = svg[svg.index("<svg"):]  # drop the XML prologue: the SVG sits inside HTML
    title = html.escape(f"batchq report: job {data.job.id}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#1a202c}}
table{{border-collapse:collapse;margin-bottom:1.5em}}th{{text-align:left;padding-right:1.5em}}
th,td{{padding:.2em .6em;border-bottom:1px solid #e2e8f0}}svg{{max-width:100%;height:auto}}</style>
</head><body><h1>{title}</h1>
<table>{rows}</table>
{svg}
</body></html>
"""
