"""Progress bars on a terminal only: into a log file they would add a line per redraw."""
import io

from tqdm import tqdm

from utils.progress import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_is_drawn_on_a_terminal_and_not_into_a_log():
    terminal, log = Terminal(), io.StringIO()
    assert list(progress(range(3), desc="loading", file=terminal)) == [0, 1, 2]
    assert "loading" in terminal.getvalue()
    assert list(progress(range(3), desc="loading", file=log)) == [0, 1, 2]
    bar = progress(total=3, desc="training", file=log)
    bar.update(3)
    bar.close()
    assert log.getvalue() == ""
    tqdm.write("bottle epoch 1/1 loss 0.1234", file=log)  # epoch lines still reach the log
    assert log.getvalue() == "bottle epoch 1/1 loss 0.1234\n"


def test_the_bar_follows_stderr(capsys):
    """Under pytest stderr is no terminal, as in a batch job."""
    assert progress(range(3)).disable
