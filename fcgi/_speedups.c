/*
 * fcgi._speedups: optional C versions of hot pure functions in fcgi.records.
 *
 * The pure-Python code in fcgi/records.py stays the reference and the
 * fallback; everything here must behave exactly like it on valid input and
 * must never guess on invalid input.  tests/test_speedups.py checks both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

/*
 * Read one FastCGI name-value length at buf[*pos], end being the buffer size.
 *
 * Spec section 3.4: a byte below 0x80 is the length itself; otherwise it is
 * the first of four big-endian bytes whose top bit is a flag, not part of the
 * length.  Returns 0 if the length itself is truncated.  The value is at most
 * 0x7FFFFFFF, which fits a size_t and a Py_ssize_t on every platform CPython
 * supports, so callers can compare it with a remaining byte count directly.
 */
static inline int
read_length(const unsigned char *buf, size_t end, size_t *pos, size_t *length)
{
    size_t p = *pos;
    if (p >= end) {
        return 0;
    }
    unsigned char first = buf[p];
    if (first < 0x80) {
        *length = first;
        *pos = p + 1;
        return 1;
    }
    /* Written as a subtraction: p < end, so end - p cannot wrap. */
    if (end - p < 4) {
        return 0;
    }
    *length = ((size_t)(first & 0x7F) << 24) | ((size_t)buf[p + 1] << 16)
              | ((size_t)buf[p + 2] << 8) | (size_t)buf[p + 3];
    *pos = p + 4;
    return 1;
}

PyDoc_STRVAR(decode_params_doc,
"decode_params(data, /)\n"
"--\n"
"\n"
"Decode a FastCGI name-value pair block into a dict of latin-1 str, last\n"
"duplicate name wins.\n"
"\n"
"data is any C-contiguous bytes-like object.  Returns None, not an\n"
"exception, if the block is malformed: the caller reports the precise\n"
"error (fcgi.records._pair_spans).");

static PyObject *
decode_params(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    /* From here on every exit goes through the labels below, which release
       the buffer. */
    const unsigned char *buf = (const unsigned char *)view.buf;
    const size_t end = (size_t)view.len; /* view.len >= 0 */
    size_t pos = 0;
    PyObject *params = PyDict_New();
    if (params == NULL) {
        goto error;
    }
    while (pos < end) {
        size_t name_len, value_len;
        if (!read_length(buf, end, &pos, &name_len)
            || !read_length(buf, end, &pos, &value_len)) {
            goto malformed;
        }
        /* Both lengths come from the peer: check them against what is really
           there before using them, without ever adding them up first (two
           31-bit lengths plus pos could wrap a 32-bit size_t).  pos <= end
           holds after read_length, so remain cannot wrap either. */
        size_t remain = end - pos;
        if (name_len > remain || value_len > remain - name_len) {
            goto malformed;
        }
        /* Each slice is decoded on its own rather than sliced out of one
           decoded copy of the whole block: same speed on typical nginx
           PARAMS (measured), and no copy of a large body just to take a
           small slice of it.  1-byte and empty strings come from CPython's
           shared singletons, so the common short values allocate nothing. */
        const char *name_start = (const char *)buf + pos;
        PyObject *name = PyUnicode_DecodeLatin1(name_start, (Py_ssize_t)name_len, NULL);
        if (name == NULL) {
            goto error;
        }
        PyObject *value = PyUnicode_DecodeLatin1(
            name_start + name_len, (Py_ssize_t)value_len, NULL);
        if (value == NULL) {
            Py_DECREF(name);
            goto error;
        }
        int failed = PyDict_SetItem(params, name, value);
        Py_DECREF(name);
        Py_DECREF(value);
        if (failed) {
            goto error;
        }
        pos += name_len + value_len; /* <= end: checked above */
    }
    PyBuffer_Release(&view);
    return params;

malformed:
    Py_DECREF(params);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;

error:
    Py_XDECREF(params);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef speedups_methods[] = {
    {"decode_params", decode_params, METH_O, decode_params_doc},
    {NULL, NULL, 0, NULL},
};

/* No module state and no slots beyond the defaults: multi-phase init makes
   the module safe to load in subinterpreters at no cost. */
static PyModuleDef_Slot speedups_slots[] = {
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fcgi._speedups",
    .m_doc = "Optional C versions of hot functions in fcgi.records.",
    .m_size = 0,
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
