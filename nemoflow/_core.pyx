# The compiled core of nemoflow. Same names and behaviour as ``_core_py.py`` (the pure-Python
# twin that the suite also runs and that a property test compares this module with); only the
# cost differs. Compiler directives live in setup.py (one place, debug build flag).
#
# Model: a scope is an immutable frame that points to its parent (``parent_uuid`` on the wire)
# and to the frame it was pushed over (restored on pop). The current frame of each thread and
# asyncio task lives in one ContextVar: a task starts under its creator's scope and its own
# pushes never touch another task's nesting.
#
# Free-threading notes: frames are immutable after construction except ``_closed``,
# ``_has_locals`` (changed under ``_registry_lock``) and ``_uuid_s`` (a benign idempotent cache).
# Global registries are tuples swapped under ``_registry_lock``. Subscriber locks are real
# locks, not the GIL.
#
# Layout: the code is in _core_src/*.pxi, included below in the order an event travels (payload
# encoded and frame bound on the traced thread, record published into the thread's ring, delivery
# thread, sinks), then the Python-facing API and the module's lifecycle. C declarations (externs,
# structs, enums, cdef class fields) are in _core.pxd.

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.contextvars cimport (
    PyContextVar_Reset,
    PyContextVar_Set,
    get_value,
    get_value_no_default,
)
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8, PyUnicode_FromObject
from libc.errno cimport EBADF
from libc.math cimport isfinite
from libc.string cimport memcpy, memset
from cpython.exc cimport PyErr_CheckSignals

from libc.stdint cimport int64_t, uint64_t

import atexit
import contextvars
import datetime as _dt
import enum
import os
import sys
import threading
import time
import functools
import types
import warnings
import weakref

import orjson

from nemoflow import _common, _exit

from nemoflow._types import (
    ATOF_VERSION,
    ATTRIBUTE_NAMES,
    CATEGORIES,
    AlreadyExistsError,
    InvalidArgumentError,
    LLMAttributes,
    LogSeverity,
    NotFoundError,
    ScopeAttributes,
    SEVERITY_KEY,
    ScopeType,
    ToolAttributes,
    attribute_names,
)

include "_core_src/constants.pxi"
include "_core_src/payload.pxi"
include "_core_src/frames.pxi"
include "_core_src/events.pxi"
include "_core_src/subscribers.pxi"
include "_core_src/record.pxi"
include "_core_src/delivery.pxi"
include "_core_src/sinks.pxi"
include "_core_src/api.pxi"
include "_core_src/spans.pxi"
include "_core_src/lifecycle.pxi"
