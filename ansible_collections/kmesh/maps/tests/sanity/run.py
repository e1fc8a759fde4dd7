# -*- coding: utf-8 -*-
# Copyright: kmesh-apply developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Run ansible-test sanity on this collection on a machine that reaches only the package index.

ansible-test bootstraps pip in each test's fresh virtualenv with a script it downloads from
its own file host; where that host is out of reach, it asks for the script to be saved in its
cache. This saves a stand-in there (ensurepip, then pip from the package index) unless a real
one is cached, puts every pyenv interpreter on PATH so compile and import run on each target
Python, runs `ansible-test sanity ARGS...` and removes the tests/output it leaves behind.

    python ansible_collections/kmesh/maps/tests/sanity/run.py [--test validate-modules ...]
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

COLLECTION = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STAND_IN = """# Stand-in for ansible-test's pip bootstrap script (saved by the kmesh.maps sanity runner).
# ensurepip runs in a child: in-process it blanks pip's configuration for what follows.
import subprocess, sys
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
"""


def pip_version():
    """The pip version this ansible-test bootstraps (it names the cached script)."""
    spec = importlib.util.find_spec("ansible_test")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("ansible-test is not installed for %s" % sys.executable)
    source = os.path.join(spec.submodule_search_locations[0], "_internal", "python_requirements.py")
    with open(source) as f:
        found = re.search(r"pip='([0-9.]+)'", f.read())
    if not found:
        sys.exit("cannot tell which pip %s bootstraps" % source)
    return found.group(1)


def save_stand_in():
    """Put the stand-in where ansible-test looks first, keeping any real script already there."""
    path = os.path.expanduser("~/.ansible/test/cache/get_pip_%s.py" % pip_version().replace(".", "_"))
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(STAND_IN)


def main():
    save_stand_in()
    pythons = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin")))
    env = dict(os.environ, PATH=os.pathsep.join([os.environ.get("PATH", "")] + pythons))
    ansible_test = os.path.join(os.path.dirname(sys.executable), "ansible-test")
    try:
        return subprocess.call([ansible_test, "sanity"] + sys.argv[1:], cwd=COLLECTION, env=env)
    finally:
        shutil.rmtree(os.path.join(COLLECTION, "tests", "output"), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
