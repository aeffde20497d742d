"""Folders dropped on "Test your model" (static/js/dropzone.js `filesFromEntries`, DOM-free),
run under Node with entries shaped like the browser's FileSystemEntry API: every file under
the folder, nested folders included, read to the end of each folder's chunked listing, hidden
files skipped, and a bound on how many are gathered."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

MODULE = Path(__file__).resolve().parents[1] / "static" / "js" / "dropzone.js"
NODE = shutil.which("node")

# A folder tree as FileSystemEntry look-alikes: readEntries hands out two entries at a time
# (Chromium hands out 100), then an empty chunk, as the real API does.
FAKE_ENTRIES = """
const file = (name) => ({ name, isFile: true, isDirectory: false,
  file: (ok) => setTimeout(() => ok({ name }), 0) });
const folder = (name, children) => ({ name, isFile: false, isDirectory: true,
  createReader() {
    let at = 0;
    return { readEntries(ok) { const chunk = children.slice(at, at + 2); at += 2; setTimeout(() => ok(chunk), 0); } };
  } });
const tree = folder("held-out", [
  file("a.jpg"), file(".DS_Store"), file("b.png"),
  folder("cats", [file("c1.jpg"), file("c2.jpg"), file("c3.jpg"), file("._c3.jpg")]),
  folder(".git", [file("config")]),
  folder("empty", []),
]);
"""


def run_js(body: str):
    assert NODE is not None, "these tests run static/js under Node.js: apt-get install nodejs"
    script = (f"const m = await import({json.dumps(MODULE.as_uri())});\n{FAKE_ENTRIES}\n"
              f"const out = await (async () => {{ {body} }})();\n"
              "console.log(JSON.stringify(out));")
    done = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_visible_file_under_a_folder_in_order():
    names = run_js("return (await m.filesFromEntries([tree])).map((f) => f.name);")
    assert names == ["a.jpg", "b.png", "c1.jpg", "c2.jpg", "c3.jpg"]


def test_folders_and_loose_files_dropped_together():
    names = run_js("return (await m.filesFromEntries([file('top.jpg'), tree])).map((f) => f.name);")
    assert names[0] == "top.jpg" and len(names) == 6


def test_gathering_stops_at_the_limit():
    names = run_js("return (await m.filesFromEntries([tree], 3)).map((f) => f.name);")
    assert names == ["a.jpg", "b.png", "c1.jpg"]
