"""The fsspec filesystem (s4ctl/fsspec.py) against a live 3-node cluster."""
from __future__ import annotations

import posixpath
import uuid

import fsspec
import pytest
from fsspec.tests.abstract import (AbstractCopyTests, AbstractFixtures, AbstractGetTests,
                                   AbstractOpenTests, AbstractPipeTests, AbstractPutTests)

from s4ctl.fsspec import S4FileSystem


@pytest.fixture(scope="module")
def s4fs(shared) -> S4FileSystem:
    return fsspec.filesystem("s4", conf=str(shared.conf))


class S4Fixtures(AbstractFixtures):
    @pytest.fixture
    def fs(self, s4fs):
        return s4fs

    @pytest.fixture
    def fs_path(self, b):
        return b

    @pytest.fixture
    def fs_join(self):
        return posixpath.join

    @pytest.fixture
    def supports_empty_directories(self):
        return False


class TestPut(S4Fixtures, AbstractPutTests):
    pass


class TestGet(S4Fixtures, AbstractGetTests):
    pass


class TestOpen(S4Fixtures, AbstractOpenTests):
    pass


class TestPipe(S4Fixtures, AbstractPipeTests):
    pass


class TestCopy(S4Fixtures, AbstractCopyTests):
    pass
