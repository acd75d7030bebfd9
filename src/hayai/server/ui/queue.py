"""Queue: the persistent job table (queued, running, finished), refreshed every two seconds; cancel a
queued job or interrupt a running one, as `DELETE /hayai/v1/jobs/{id}`. It is the store's table, so it
is the same after a restart."""

from __future__ import annotations

import gradio as gr

from hayai.server.ui import common

__all__ = ["QueuePage", "queue_rows"]

COLUMNS = ["id", "kind", "status", "position", "progress", "what", "created", "error"]


def _what(job: dict) -> str:
    request = job.get("request") or {}
    if job["kind"] == "train":
        config = request.get("config") or {}
        return f"LoRA {config.get('output_name')} · {config.get('steps')} steps"
    if job["kind"] == "sweep":
        return f"{(request.get('request') or {}).get('prompt', '')[:40]} · " + " × ".join(
            request[a] for a in ("x", "y", "z") if request.get(a))
    return (request.get("prompt") or "")[:60]


def queue_rows(state, status: str | None = None) -> list[list]:
    from hayai.server.hayai_api import list_jobs

    rows = []
    for job in list_jobs(common.as_request(state), status=status or None, limit=200):
        progress = job.get("progress")
        rows.append([job["id"], job["kind"], job["status"], "" if job["position"] is None else job["position"],
                     f"{progress['done']}/{progress['total']}" if progress else "", _what(job),
                     (job.get("created_at") or "")[:19].replace("T", " "), (job.get("error") or "")[:80]])
    return rows


class QueuePage:
    def __init__(self, state) -> None:
        self.state = state
        with gr.Row():
            self.status = gr.Dropdown(choices=[("all", ""), "queued", "running", "done", "interrupted", "error", "cancelled"],
                                      value="", label="Show", elem_id="queue_status", scale=1)
            self.job_id = gr.Textbox(label="Job id", elem_id="queue_job_id", scale=2,
                                     placeholder="click a row, or paste an id")
            self.cancel = gr.Button("Cancel / interrupt", variant="stop", elem_id="queue_cancel", scale=1)
            self.refresh = gr.Button("↻ refresh", elem_id="queue_refresh", scale=1)
        self.message = gr.Markdown(elem_id="queue_message")
        self.table = gr.Dataframe(headers=COLUMNS, value=lambda: queue_rows(state), interactive=False, wrap=True,
                                  elem_id="queue_table", column_widths=["11%", "7%", "9%", "7%", "8%", "34%", "14%", "10%"])
        self.timer = gr.Timer(2.0)
        for trigger in (self.refresh.click, self.status.change, self.timer.tick):
            trigger(lambda status: queue_rows(state, status), inputs=self.status, outputs=self.table,
                    show_progress="hidden")
        self.table.select(_row_id, outputs=self.job_id)
        self.cancel.click(self._cancel, inputs=[self.job_id, self.status], outputs=[self.message, self.table])

    def _cancel(self, job_id: str, status: str):
        from hayai.server.hayai_api import cancel_job

        try:
            job = cancel_job(common.as_request(self.state), (job_id or "").strip())
            message = f"job {job['id']}: {'cancelled' if job['status'] == 'cancelled' else 'interrupting at the next step'}"
        except Exception as error:
            message = f"⚠ {common.route_error(error)}"
        return message, queue_rows(self.state, status)


def _row_id(evt: gr.SelectData):
    row = evt.row_value if hasattr(evt, "row_value") else None
    return row[0] if row else gr.update()
