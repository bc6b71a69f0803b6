"""`metareward` with a SIGKILL at a chosen moment, for the resume tests. Test-only: production code never reads
it; this wrapper patches the run's functions before calling the CLI.

    python tests/recipe/faults.py KIND:iter_<t>/<stage> metareward-arguments...

KIND  write: inside the stage, halfway through writing its artifact (train: its checkpoint), so a temporary
             file is left behind and the stage is not recorded;
      end:   at the stage boundary, right after state.json records the stage.
The process kills itself with SIGKILL, exactly as `kill -9` would: no handler, no cleanup."""
import os
import signal
import sys


def die():
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    kind, where = sys.argv[1].split(":", 1)
    import metareward.io as io
    import metareward.model.checkpoint as checkpoint
    import metareward.recipe.summary as summary
    import metareward.rundir as rundir
    import metareward.stage as stage
    from metareward.cli import main as cli

    current = {}
    real_begin, real_mark = rundir.RunDir.begin, rundir.RunDir.mark

    def begin(self, key, save=True):
        current["stage"] = key
        real_begin(self, key, save)

    def mark(self, key, stats, save=True):
        real_mark(self, key, stats, save)
        if kind == "end" and key == where:
            die()

    def write_jsonl(path, rows):
        rows = list(rows)
        if kind == "write" and current.get("stage") == where:
            with io.atomic_write(path) as f:
                for r in rows[:len(rows) // 2]:
                    f.write(io.dumps(r) + "\n")
                f.flush()
                die()
        io.write_jsonl(path, rows)

    def write_json(path, obj):
        if kind == "write" and current.get("stage") == where:
            with io.atomic_write(path) as f:
                f.write(io.dumps(obj)[:20])
                f.flush()
                die()
        io.write_json(path, obj)

    real_save = checkpoint.save_file

    def save_file(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        if kind == "write" and current.get("stage") == where:
            die()  # the checkpoint's temporary folder holds the weights, not yet renamed into place

    rundir.RunDir.begin, rundir.RunDir.mark = begin, mark
    stage.write_jsonl = write_jsonl
    summary.write_json = write_json
    checkpoint.save_file = save_file
    sys.exit(cli(sys.argv[2:]))


if __name__ == "__main__":
    main()
