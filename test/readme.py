#!/usr/bin/python3
"""Run the README's SQL examples in order and check what they print.

    test/readme.py README.md DBNAME

Two kinds of fenced blocks run, top to bottom, against DBNAME (PG*
variables say where the server is):

- a block marked ```sql is one psql script: every statement must succeed;
- a block whose lines start with a psql prompt (``name=# ``) is a
  transcript: each command (the prompt line and its continuation lines, up
  to a closing ``;`` or a backslash command) runs on its own, and the lines
  shown under it must equal what psql prints (with footers off, blank lines
  and trailing spaces ignored).  A command shown without output only has
  to succeed, unless it shows an ERROR.  In a shown line ``…`` stands for
  any text (a timestamp, an id that depends on the machine).

Other blocks (shell, ini, Redis commands) are not run here.  Each block and
each checked command prints one "ok - " or "not ok - " line (a failure is
followed by "#" lines showing both sides); the exit status is 1 if any
failed or none ran.
"""
import os
import re
import subprocess
import sys

PROMPT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=[#>] ")
PSQL = os.path.join(os.environ.get("COUNTER_PG_BIN", "/usr/lib/postgresql/15/bin"), "psql")


def blocks(text):
    """Yield (line number, info string, lines) for each fenced block."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, info, start = m.group(1), m.group(2), i + 1
        body = []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        yield start, info, body


def commands(body):
    """Split a transcript into (command text, shown output lines)."""
    out = []
    cur = None
    for line in body:
        if PROMPT.match(line):
            if cur:
                out.append(cur)
            cur = [[PROMPT.sub("", line, count=1)], [], False]
            cur[2] = ends(cur[0][-1])
        elif cur is not None and not cur[2]:
            cur[0].append(line)
            cur[2] = ends(line)
        elif cur is not None:
            cur[1].append(line)
    if cur:
        out.append(cur)
    return [("\n".join(c), o) for c, o, _ in out]


def ends(line):
    code = re.sub(r"--.*$", "", line).rstrip()
    return code.endswith(";") or bool(re.search(r"\\g\w*$", code)) or code.lstrip().startswith("\\")


def psql(db, script, stop_on_error):
    args = [PSQL, "-X", "-q", "-P", "pager=off", "-P", "footer=off", "-d", db, "-f", "-"]
    if stop_on_error:
        args[1:1] = ["-v", "ON_ERROR_STOP=1"]
    p = subprocess.run(args, input=script, capture_output=True, text=True)
    err = re.sub(r"^psql:<stdin>:\d+: ", "", p.stderr, flags=re.M)
    return p.returncode, p.stdout, err


def clean(lines):
    return [l.rstrip() for l in lines if l.strip()]


def matches(shown, got):
    if len(shown) != len(got):
        return False
    for s, g in zip(shown, got):
        if "…" in s:
            pattern = ".*".join(re.escape(part) for part in s.split("…"))
            if not re.fullmatch(pattern, g):
                return False
        elif s != g:
            return False
    return True


def main():
    path, db = sys.argv[1], sys.argv[2]
    with open(path) as f:
        text = f.read()
    results = []
    for start, info, body in blocks(text):
        if info == "sql":
            rc, out, err = psql(db, "\n".join(body) + "\n", True)
            first = next((l for l in body if l.strip() and not l.startswith("--")), "").strip()
            results.append((rc == 0, "README line %d: sql block (%s)" % (start, first[:60]), err.strip()))
        elif any(PROMPT.match(l) for l in body):
            for cmd, shown in commands(body):
                rc, out, err = psql(db, cmd + "\n", False)
                got = clean(out.split("\n") + err.split("\n"))
                want = clean(shown)
                label = "README line %d: %s" % (start, " ".join(cmd.split())[:70])
                if not want:
                    results.append((rc == 0 and not err.strip(), label, err.strip()))
                else:
                    ok = matches(want, got)
                    why = "" if ok else "shown:\n  " + "\n  ".join(want) + "\nprinted:\n  " + "\n  ".join(got)
                    results.append((ok, label, why))
    for ok, label, why in results:
        if ok:
            print("ok - " + label)
        else:
            print("not ok - " + label)
            for line in why.split("\n"):
                print("#   " + line)
    sys.exit(0 if results and all(r[0] for r in results) else 1)


if __name__ == "__main__":
    main()
