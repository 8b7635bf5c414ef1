"""The progress bar's rate and ETA appear from the first update on, however slow the steps."""

from __future__ import annotations

from rich.progress import Progress

from imgcluster.ui import EtaColumn, RateColumn


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_and_eta_from_the_first_batch() -> None:
    clock = Clock()
    progress = Progress(get_time=clock)
    task_id = progress.add_task("embedding", total=132)
    task = progress.tasks[0]
    assert RateColumn().render(task).plain == "     -/s" and EtaColumn().render(task).plain == "-:--:--"
    clock.now += 64.0  # one slow batch of 16 images: 4 s an image
    progress.update(task_id, completed=16)
    assert RateColumn().render(task).plain == "   0.2/s"
    assert EtaColumn().render(task).plain == "0:07:44"  # 116 images left at 0.25 images/s
    clock.now += 3600.0
    progress.update(task_id, completed=131)
    assert EtaColumn().render(task).plain == "0:00:28"


def test_finished_bar_has_no_time_left() -> None:
    clock = Clock()
    progress = Progress(get_time=clock)
    task_id = progress.add_task("training", total=10)
    clock.now += 5.0
    progress.update(task_id, completed=10)
    assert RateColumn().render(progress.tasks[0]).plain == "   2.0/s" and EtaColumn().render(progress.tasks[0]).plain == "0:00:00"
