# Module constants and the C helpers' one-time setup.
# Included by _core.pyx, in the order listed there; declarations live in _core.pxd.

BACKEND = "cython"

KIND_SCOPE = 0
KIND_TOOL = 1
KIND_LLM = 2
STATUS_NONE = 0
STATUS_OK = 1
STATUS_ERROR = 2

cdef tuple _ATTR_CLASS = (ScopeAttributes, ToolAttributes, LLMAttributes)
cdef tuple _CATEGORIES = CATEGORIES
cdef object _ScopeType = ScopeType

nf_init_hex_pairs()
if nf_install_fork_handler() != 0:
    raise ImportError("nemoflow: could not install the fork handler")
