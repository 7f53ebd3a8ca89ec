#!/usr/bin/env python
"""A host project, as ``django-admin startproject`` makes it, with kumosubmit added.

tests/test_wheel.py copies this folder out of the repository and runs it with the
wheel installed in a fresh virtualenv, so nothing of the repository is importable.
"""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hostproject.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
