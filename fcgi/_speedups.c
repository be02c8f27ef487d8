/*
 * fcgi._speedups: optional C versions of hot pure functions of fcgi.records,
 * fcgi.connection (the request head), fcgi.wsgi (the response head),
 * fcgi.uwsgi (the vars block) and fcgi.asgi (the scope).
 *
 * The pure-Python code stays the reference and the fallback: each function
 * here names its Python twin (or, for scan_head, the record loop that checks
 * it), must give the same result on valid input, and returns None rather
 * than guess on anything else, so that the precise error always comes from
 * the Python code.  tests/test_speedups.py and tests/test_fastpath.py feed
 * both generated input and compare.  FCGI_PURE_PYTHON=1 turns all of it off.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

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

/*
 * Strings seen again and again.
 *
 * A web server sends the same PARAMS names with every request (nginx's
 * fastcgi_params: about twenty), and many of the same short values ("GET",
 * "HTTP/1.1", its own address).  Decoding each into a new str, then hashing
 * the names again to put them in a dict, is a good part of what a request
 * costs; so the str made for a short name or value is kept, by its bytes, in
 * a small direct-mapped table, and the next request that sends the same
 * bytes gets the same object (a name's hash is cached in it).  A peer that
 * sends ever-new strings only makes entries change: the table never grows,
 * and what it holds is exactly what a fresh decode would give.
 */

/* Slots per table; a power of two.  Collisions among nginx's names are rare
   at this size and cost only a fresh decode. */
#define CACHE_SLOTS 512
/* Longer strings are decoded anew each time: rarely repeated, costly to
   compare.  Values are held to a shorter length than names, and only the
   web server's own variables' values are kept ("GET", "HTTP/1.1",
   "CGI/1.1", its address, a port): never an HTTP_* header's, which is where
   a client's cookies, tokens and keys arrive, so that no secret of one
   request stays in the worker after it (see value_max). */
#define CACHE_NAME_MAX 32
#define CACHE_VALUE_MAX 16

/* How long a value of the variable named name[0:n] may be to be kept. */
static inline size_t
value_max(const unsigned char *name, size_t n)
{
    return n >= 5 && memcmp(name, "HTTP_", 5) == 0 ? 0 : CACHE_VALUE_MAX;
}

/* The strings asgi_scope() looks up and writes, made once per module (see
   scope_strings()); in the order of scope_string_text below. */
enum {
    S_SCRIPT_NAME, S_PATH_INFO, S_REQUEST_URI, S_CONTENT_TYPE, S_HTTP_CONTENT_TYPE,
    S_CONTENT_LENGTH, S_HTTP_CONTENT_LENGTH, S_HTTPS, S_REQUEST_SCHEME, S_REMOTE_ADDR,
    S_REMOTE_PORT, S_SERVER_PORT, S_SERVER_ADDR, S_SERVER_NAME, S_SERVER_PROTOCOL,
    S_REQUEST_METHOD, S_QUERY_STRING,
    S_type, S_asgi, S_http_version, S_method, S_scheme, S_path, S_raw_path, S_query_string,
    S_root_path, S_headers, S_client, S_server, S_extensions, S_fastcgi, S_params,
    S_http, S_https,
    S_COUNT
};

typedef struct {
    PyObject *names[CACHE_SLOTS];
    PyObject *values[CACHE_SLOTS];
    /* Interned, for asgi_scope(); NULL until its first call. */
    PyObject *strings[S_COUNT];
    /* b"content-type", b"content-length": the body's ASGI header names. */
    PyObject *content_type;
    PyObject *content_length;
} speedups_state;

/* FNV-1a over the bytes (at most CACHE_NAME_MAX of them) and the length. */
static inline size_t
cache_slot(const unsigned char *s, size_t n)
{
    uint32_t h = 2166136261u ^ (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ s[i]) * 16777619u;
    }
    return h & (CACHE_SLOTS - 1);
}

/* A new reference to the latin-1 str of s[0:n], from table when it is there
   (only strings of at most max bytes are looked up and kept). */
static PyObject *
cached_latin1(PyObject **table, size_t max, const unsigned char *s, size_t n)
{
    if (n > max) {
        return PyUnicode_DecodeLatin1((const char *)s, (Py_ssize_t)n, NULL);
    }
    PyObject **slot = &table[cache_slot(s, n)];
    PyObject *hit = *slot;
    /* Every str in the table came from PyUnicode_DecodeLatin1: one byte per
       character, so comparing the bytes compares the strings. */
    if (hit != NULL && (size_t)PyUnicode_GET_LENGTH(hit) == n
        && memcmp(PyUnicode_1BYTE_DATA(hit), s, n) == 0) {
        return Py_NewRef(hit);
    }
    PyObject *text = PyUnicode_DecodeLatin1((const char *)s, (Py_ssize_t)n, NULL);
    if (text != NULL) {
        Py_XSETREF(*slot, Py_NewRef(text));
    }
    return text;
}

/*
 * Decode the name-value pair block buf[0:end] into a new dict of latin-1 str.
 *
 * Returns the dict, Py_None (a new reference) if the block is malformed, or
 * NULL with an exception set if memory ran out.
 */
static PyObject *
decode_block(speedups_state *state, const unsigned char *buf, size_t end)
{
    size_t pos = 0;
    PyObject *params = PyDict_New();
    if (params == NULL) {
        return NULL;
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
           decoded copy of the whole block: no copy of a large block just to
           take a small slice of it, and short strings come from the cache. */
        const unsigned char *name_start = buf + pos;
        PyObject *name = cached_latin1(state->names, CACHE_NAME_MAX, name_start, name_len);
        if (name == NULL) {
            goto error;
        }
        PyObject *value = cached_latin1(
            state->values, value_max(name_start, name_len), name_start + name_len, value_len);
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
    return params;

malformed:
    Py_DECREF(params);
    Py_RETURN_NONE;

error:
    Py_DECREF(params);
    return NULL;
}

static PyObject *
decode_params(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *params = decode_block(
        PyModule_GetState(module), (const unsigned char *)view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return params;
}

/* Record layout (spec section 3.3): version, type, request id (2 bytes, big
   endian), content length (2 bytes), padding length, reserved. */
#define HEADER_LEN 8
#define VERSION_1 1
#define TYPE_BEGIN_REQUEST 1
#define TYPE_PARAMS 4
/* BEGIN_REQUEST's body: role (2 bytes), flags, 5 reserved bytes. */
#define BEGIN_BODY_LEN 8

/* Reads the record header at buf[pos]; 0 unless the whole record (header,
   content and padding) lies within end and its version is 1. */
static inline int
read_record(const unsigned char *buf, size_t end, size_t pos, unsigned *type,
            unsigned *rid, size_t *content_len, size_t *stop)
{
    if (end - pos < HEADER_LEN || buf[pos] != VERSION_1) {
        return 0;
    }
    const unsigned char *h = buf + pos;
    *type = h[1];
    *rid = ((unsigned)h[2] << 8) | h[3];
    *content_len = ((size_t)h[4] << 8) | h[5];
    /* At most 8 + 65535 + 255 bytes: no overflow in any size_t. */
    size_t total = HEADER_LEN + *content_len + h[6];
    if (end - pos < total) {
        return 0;
    }
    *stop = pos + total;
    return 1;
}

PyDoc_STRVAR(scan_head_doc,
"scan_head(data, /)\n"
"--\n"
"\n"
"Recognise a whole request head at the start of data: a BEGIN_REQUEST,\n"
"then PARAMS records of the same id up to the empty one, all complete.\n"
"\n"
"Returns (request_id, role, flags, params, params_length, end): the\n"
"decoded PARAMS (as decode_params), the PARAMS content length in all, and\n"
"the offset just past the empty PARAMS record.  Returns None for anything\n"
"else (another record in between, a head not complete yet, a malformed\n"
"record or pair block); the caller then runs its general record loop, which\n"
"alone decides what is an error.  This function applies no rule of the\n"
"protocol: fcgi.connection.ServerConnection does.");

static PyObject *
scan_head(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)view.buf;
    const size_t end = (size_t)view.len;
    PyObject *result = NULL;
    unsigned char *joined = NULL;
    unsigned type, rid, params_rid;
    size_t clen, pos;

    if (!read_record(buf, end, 0, &type, &rid, &clen, &pos)
        || type != TYPE_BEGIN_REQUEST || rid == 0 || clen != BEGIN_BODY_LEN) {
        goto no_match;
    }
    unsigned role = ((unsigned)buf[HEADER_LEN] << 8) | buf[HEADER_LEN + 1];
    unsigned flags = buf[HEADER_LEN + 2];

    /* First pass: find the PARAMS records, their total size and the first
       one with content (the usual case is exactly one). */
    size_t total = 0, first = 0, first_len = 0, records = 0;
    size_t scan = pos, stop;
    for (;;) {
        if (!read_record(buf, end, scan, &type, &params_rid, &clen, &stop)
            || type != TYPE_PARAMS || params_rid != rid) {
            goto no_match;
        }
        if (clen == 0) {
            break;
        }
        if (records++ == 0) {
            first = scan + HEADER_LEN;
            first_len = clen;
        }
        total += clen; /* bounded by the buffer's length */
        scan = stop;
    }
    PyObject *params;
    if (records <= 1) {
        params = decode_block(PyModule_GetState(module), buf + first, first_len);
    }
    else {
        /* A pair may straddle records: join the contents once. */
        joined = PyMem_Malloc(total);
        if (joined == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        size_t fill = 0, at = pos;
        for (;;) {
            (void)read_record(buf, end, at, &type, &params_rid, &clen, &stop);
            if (clen == 0) {
                break;
            }
            memcpy(joined + fill, buf + at + HEADER_LEN, clen);
            fill += clen;
            at = stop;
        }
        params = decode_block(PyModule_GetState(module), joined, total);
    }
    if (params == NULL) {
        goto done;
    }
    if (params == Py_None) {
        Py_DECREF(params);
        goto no_match;
    }
    result = Py_BuildValue("(IIINnn)", rid, role, flags, params, (Py_ssize_t)total,
                           (Py_ssize_t)stop);
    goto done;

no_match:
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(joined);
    PyBuffer_Release(&view);
    return result;
}

/* -- the CGI response head (fcgi.wsgi._encode_head) ------------------------ */

/* RFC 9110 section 5.6.2: tchar, the characters of a header name. */
static int
is_tchar(Py_UCS1 c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return 1;
    }
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Header names that describe one HTTP hop; a WSGI app may not send them
   (PEP 3333), and the web server makes its own. Lower case. */
static const char *const hop_by_hop[] = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailers", "transfer-encoding", "upgrade", NULL,
};

/* 1 if the n bytes at s equal the lower-case word, ignoring ASCII case. */
static int
equals_lower(const Py_UCS1 *s, Py_ssize_t n, const char *word)
{
    Py_ssize_t i = 0;
    for (; i < n && word[i] != '\0'; i++) {
        Py_UCS1 c = s[i];
        if (c >= 'A' && c <= 'Z') {
            c = (Py_UCS1)(c + ('a' - 'A'));
        }
        if (c != (Py_UCS1)word[i]) {
            return 0;
        }
    }
    return i == n && word[i] == '\0';
}

/* A str whose every character fits one latin-1 byte, else NULL. */
static const Py_UCS1 *
latin1_chars(PyObject *text, Py_ssize_t *length)
{
    if (!PyUnicode_CheckExact(text) || PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND) {
        return NULL;
    }
    *length = PyUnicode_GET_LENGTH(text);
    return PyUnicode_1BYTE_DATA(text);
}

/* 1 if none of CR, LF, NUL is among the n characters (they would end the
   line early, in fcgi or in the web server). */
static int
one_line(const Py_UCS1 *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') {
            return 0;
        }
    }
    return 1;
}

PyDoc_STRVAR(encode_head_doc,
"encode_head(status, headers, /)\n"
"--\n"
"\n"
"The CGI header block for a WSGI start_response() call, and whether it has\n"
"a Content-Length: (bytes, bool).\n"
"\n"
"Returns None, not an exception, for anything fcgi.wsgi._encode_head_py\n"
"would refuse (or that this function does not vouch for); the caller then\n"
"runs that reference, which raises the precise error.");

static PyObject *
encode_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "encode_head() takes exactly 2 arguments");
        return NULL;
    }
    PyObject *status = args[0], *headers = args[1];
    Py_ssize_t status_len;
    const Py_UCS1 *st = latin1_chars(status, &status_len);
    /* "NNN reason": a 3-digit code not starting with 0, a space, one line. */
    if (st == NULL || status_len < 4 || st[0] < '1' || st[0] > '9' || st[1] < '0'
        || st[1] > '9' || st[2] < '0' || st[2] > '9' || st[3] != ' '
        || !one_line(st, status_len) || !PyList_CheckExact(headers)) {
        Py_RETURN_NONE;
    }
    /* First pass: check every header and add up the size. */
    Py_ssize_t count = PyList_GET_SIZE(headers);
    Py_ssize_t total = 8 + status_len + 2 + 2; /* "Status: " status CRLF ... CRLF */
    int has_length = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) {
            Py_RETURN_NONE;
        }
        Py_ssize_t name_len = 0, value_len = 0;
        const Py_UCS1 *name = latin1_chars(PyTuple_GET_ITEM(item, 0), &name_len);
        const Py_UCS1 *value = latin1_chars(PyTuple_GET_ITEM(item, 1), &value_len);
        if (name == NULL || value == NULL || name_len == 0 || !one_line(value, value_len)) {
            Py_RETURN_NONE;
        }
        for (Py_ssize_t j = 0; j < name_len; j++) {
            if (!is_tchar(name[j])) {
                Py_RETURN_NONE;
            }
        }
        for (const char *const *hop = hop_by_hop; *hop != NULL; hop++) {
            if (equals_lower(name, name_len, *hop)) {
                Py_RETURN_NONE;
            }
        }
        if (equals_lower(name, name_len, "content-length")) {
            has_length = 1;
        }
        total += name_len + 2 + value_len + 2; /* name ": " value CRLF */
    }
    /* Second pass: nothing can fail any more but the allocation. The list
       cannot change in between: no Python code runs here. */
    PyObject *head = PyBytes_FromStringAndSize(NULL, total);
    if (head == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(head);
    memcpy(out, "Status: ", 8);
    out += 8;
    memcpy(out, st, (size_t)status_len);
    out += status_len;
    *out++ = '\r';
    *out++ = '\n';
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        PyObject *name = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        Py_ssize_t name_len = PyUnicode_GET_LENGTH(name);
        Py_ssize_t value_len = PyUnicode_GET_LENGTH(value);
        memcpy(out, PyUnicode_1BYTE_DATA(name), (size_t)name_len);
        out += name_len;
        *out++ = ':';
        *out++ = ' ';
        memcpy(out, PyUnicode_1BYTE_DATA(value), (size_t)value_len);
        out += value_len;
        *out++ = '\r';
        *out++ = '\n';
    }
    *out++ = '\r';
    *out++ = '\n';
    return Py_BuildValue("(NO)", head, has_length ? Py_True : Py_False);
}

/* -- the uwsgi vars block (fcgi.uwsgi.UwsgiConnection._parse) ---------------- */

PyDoc_STRVAR(decode_uwsgi_vars_doc,
"decode_uwsgi_vars(head, start, /)\n"
"--\n"
"\n"
"Decode the uwsgi vars block head[start:]: pairs of a 2-byte little-endian\n"
"key length, the key, a 2-byte little-endian value length, the value.\n"
"Returns (params, pairs): latin-1 str, last duplicate wins, and how many\n"
"pairs there were; or None if the block is malformed (the Python code says\n"
"how).");

static PyObject *
decode_uwsgi_vars(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "decode_uwsgi_vars() takes exactly 2 arguments");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    speedups_state *state = PyModule_GetState(module);
    const unsigned char *buf = (const unsigned char *)view.buf;
    const size_t end = (size_t)view.len;
    PyObject *params = NULL, *result = NULL;
    if (start < 0 || (size_t)start > end) {
        goto malformed;
    }
    params = PyDict_New();
    if (params == NULL) {
        goto done;
    }
    size_t pos = (size_t)start, pairs = 0;
    while (pos < end) {
        /* Every length is checked against what is left before it is used:
           pos <= end holds at the top of the loop, so end - pos cannot wrap. */
        if (end - pos < 2) {
            goto malformed;
        }
        size_t key_len = (size_t)buf[pos] | ((size_t)buf[pos + 1] << 8);
        pos += 2;
        if (end - pos < key_len + 2) {
            goto malformed;
        }
        const unsigned char *key_start = buf + pos;
        pos += key_len;
        size_t value_len = (size_t)buf[pos] | ((size_t)buf[pos + 1] << 8);
        pos += 2;
        if (end - pos < value_len) {
            goto malformed;
        }
        PyObject *key = cached_latin1(state->names, CACHE_NAME_MAX, key_start, key_len);
        if (key == NULL) {
            goto done;
        }
        PyObject *value = cached_latin1(
            state->values, value_max(key_start, key_len), buf + pos, value_len);
        if (value == NULL) {
            Py_DECREF(key);
            goto done;
        }
        int failed = PyDict_SetItem(params, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (failed) {
            goto done;
        }
        pos += value_len;
        pairs++;
    }
    result = Py_BuildValue("(On)", params, (Py_ssize_t)pairs);
    goto done;

malformed:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(params);
    PyBuffer_Release(&view);
    return result;
}

/* -- the ASGI scope (fcgi.asgi._build_scope_py) ------------------------------ */

PyDoc_STRVAR(asgi_scope_doc,
"asgi_scope(params, header_names, http_versions, asgi_info, /)\n"
"--\n"
"\n"
"The ASGI http scope of a request's params (a dict of str), as\n"
"fcgi.asgi._build_scope_py makes it with no mount point and no state.\n"
"header_names and http_versions are that module's caches (read here, never\n"
"written); asgi_info is the scope's \"asgi\" dict, copied.\n"
"\n"
"Returns None for anything it does not vouch for: a name not in the header\n"
"cache yet, a path or method that needs more than ASCII rules, a port that\n"
"is not plain digits, a missing REQUEST_URI or PATH_INFO, a str that is not\n"
"latin-1. The caller then runs the reference.");

static const char *const scope_string_text[S_COUNT] = {
    "SCRIPT_NAME", "PATH_INFO", "REQUEST_URI", "CONTENT_TYPE", "HTTP_CONTENT_TYPE",
    "CONTENT_LENGTH", "HTTP_CONTENT_LENGTH", "HTTPS", "REQUEST_SCHEME", "REMOTE_ADDR",
    "REMOTE_PORT", "SERVER_PORT", "SERVER_ADDR", "SERVER_NAME", "SERVER_PROTOCOL",
    "REQUEST_METHOD", "QUERY_STRING",
    "type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "query_string",
    "root_path", "headers", "client", "server", "extensions", "fastcgi", "params",
    "http", "https",
};

/* The state's strings, made on first use; NULL with an exception if memory ran out. */
static PyObject **
scope_strings(speedups_state *state)
{
    if (state->strings[S_COUNT - 1] == NULL) {
        for (int i = 0; i < S_COUNT; i++) {
            if (state->strings[i] == NULL) {
                state->strings[i] = PyUnicode_InternFromString(scope_string_text[i]);
                if (state->strings[i] == NULL) {
                    return NULL;
                }
            }
        }
    }
    if (state->content_type == NULL) {
        state->content_type = PyBytes_FromString("content-type");
        if (state->content_type == NULL) {
            return NULL;
        }
    }
    if (state->content_length == NULL) {
        state->content_length = PyBytes_FromString("content-length");
        if (state->content_length == NULL) {
            return NULL;
        }
    }
    return state->strings;
}

/* Why a variable gave nothing usable: absent, present, or a value this code
   does not handle (not an exact str of latin-1 characters). */
enum { ABSENT, FOUND, UNSUITABLE };

/* The variable found for a name (or NULL) as latin-1 characters: *text
   borrowed, *chars and *n set when FOUND. */
static int
param(PyObject *value, PyObject **text, const Py_UCS1 **chars, Py_ssize_t *n)
{
    if (value == NULL) {
        return ABSENT;
    }
    const Py_UCS1 *c = latin1_chars(value, n);
    if (c == NULL) {
        return UNSUITABLE;
    }
    *text = value;
    *chars = c;
    return FOUND;
}

static int
all_ascii(const Py_UCS1 *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] >= 0x80) {
            return 0;
        }
    }
    return 1;
}

/* fcgi.asgi._port for a value of plain ASCII digits: 1 with *port set; 0 for
   anything else, which the reference decides (int() accepts more). */
static int
plain_port(const Py_UCS1 *s, Py_ssize_t n, long *port)
{
    if (n < 1 || n > 9) {
        return 0;
    }
    long v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
        v = v * 10 + (s[i] - '0');
    }
    *port = v;
    return 1;
}

/* A new bytes object of a latin-1 str's characters (what .encode("latin-1") gives). */
static PyObject *
latin1_bytes(const Py_UCS1 *s, Py_ssize_t n)
{
    return PyBytes_FromStringAndSize((const char *)s, n);
}

/* Append (name, value bytes) to headers; -1 with an exception on failure. */
static int
append_header(PyObject *headers, PyObject *name, const Py_UCS1 *value, Py_ssize_t n)
{
    PyObject *raw = latin1_bytes(value, n);
    if (raw == NULL) {
        return -1;
    }
    PyObject *pair = PyTuple_Pack(2, name, raw);
    Py_DECREF(raw);
    if (pair == NULL) {
        return -1;
    }
    int failed = PyList_Append(headers, pair);
    Py_DECREF(pair);
    return failed;
}

/* (text, port) for the scope's client and server. */
static PyObject *
address(PyObject *host, long port)
{
    PyObject *number = PyLong_FromLong(port);
    if (number == NULL) {
        return NULL;
    }
    PyObject *pair = PyTuple_Pack(2, host, number);
    Py_DECREF(number);
    return pair;
}

/* {"fastcgi": {"params": params}}: the scope's extensions. */
static PyObject *
extensions(PyObject **k, PyObject *params)
{
    PyObject *inner = PyDict_New(), *outer = NULL;
    if (inner == NULL || PyDict_SetItem(inner, k[S_params], params) < 0) {
        goto done;
    }
    outer = PyDict_New();
    if (outer != NULL && PyDict_SetItem(outer, k[S_fastcgi], inner) < 0) {
        Py_CLEAR(outer);
    }
done:
    Py_XDECREF(inner);
    return outer;
}

/* A dict with room for n items, for a dict whose size is known (the ASGI
   scope): made at its size, it is not grown and rehashed on the way. Not
   for a params dict: sized from the pair count, one name repeated would
   make a dict of megabytes holding one entry, and timing showed no gain. */
static PyObject *
new_dict(Py_ssize_t n)
{
#if PY_VERSION_HEX < 0x030D0000
    return _PyDict_NewPresized(n);
#else
    (void)n; /* not part of the API from 3.13 on */
    return PyDict_New();
#endif
}

/* The first CGI_COUNT strings are the variables the scope reads. */
#define CGI_COUNT (S_QUERY_STRING + 1)

static PyObject *
asgi_scope(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "asgi_scope() takes exactly 4 arguments");
        return NULL;
    }
    PyObject *params = args[0], *header_names = args[1], *http_versions = args[2];
    PyObject *asgi_info = args[3];
    if (!PyDict_CheckExact(params) || !PyDict_CheckExact(header_names)
        || !PyDict_CheckExact(http_versions) || !PyDict_CheckExact(asgi_info)) {
        Py_RETURN_NONE;
    }
    speedups_state *state = PyModule_GetState(module);
    PyObject **k = scope_strings(state);
    if (k == NULL) {
        return NULL;
    }
    PyObject *scope = NULL, *headers = NULL, *item = NULL;
    PyObject *text;
    const Py_UCS1 *c;
    Py_ssize_t n;
    int found;

    /* One pass over the variables, in their order: each HTTP_ one the
       header cache names becomes a header, and the CGI variables the scope
       reads are noted (a dict has each name once, so this is what looking
       each of them up would find). */
    headers = PyList_New(0);
    if (headers == NULL) {
        return NULL;
    }
    PyObject *cgi[CGI_COUNT] = {NULL};
    Py_ssize_t pos = 0;
    PyObject *name, *value;
    while (PyDict_Next(params, &pos, &name, &value)) {
        Py_ssize_t name_len;
        const Py_UCS1 *name_chars = latin1_chars(name, &name_len);
        if (name_chars == NULL) {
            goto fallback; /* the reference says what is wrong with it */
        }
        for (int i = 0; i < CGI_COUNT; i++) {
            if (PyUnicode_GET_LENGTH(k[i]) == name_len
                && memcmp(PyUnicode_1BYTE_DATA(k[i]), name_chars, (size_t)name_len) == 0) {
                cgi[i] = value;
                break;
            }
        }
        /* Only an HTTP_ variable can be a header (fcgi.asgi._header_name). */
        if (name_len < 5 || memcmp(name_chars, "HTTP_", 5) != 0) {
            continue;
        }
        PyObject *header = PyDict_GetItemWithError(header_names, name);
        if (header == NULL) {
            if (PyErr_Occurred()) {
                goto error;
            }
            goto fallback; /* not seen yet: the reference names it and caches it */
        }
        if (header == Py_None) {
            continue;
        }
        if (!PyBytes_CheckExact(header) || (c = latin1_chars(value, &n)) == NULL) {
            goto fallback;
        }
        if (append_header(headers, header, c, n) < 0) {
            goto error;
        }
    }
    /* The body's two headers, from their CGI variables or the HTTP_ ones. */
    static const int body[2][2] = {
        {S_CONTENT_TYPE, S_HTTP_CONTENT_TYPE},
        {S_CONTENT_LENGTH, S_HTTP_CONTENT_LENGTH},
    };
    for (int i = 0; i < 2; i++) {
        found = param(cgi[body[i][0]], &text, &c, &n);
        if (found == UNSUITABLE) {
            goto fallback;
        }
        if (found == ABSENT || n == 0) {
            found = param(cgi[body[i][1]], &text, &c, &n);
            if (found == UNSUITABLE) {
                goto fallback;
            }
        }
        if (found == FOUND && n > 0) {
            PyObject *header_name = i == 0 ? state->content_type : state->content_length;
            if (append_header(headers, header_name, c, n) < 0) {
                goto error;
            }
        }
    }

    /* The path: SCRIPT_NAME then PATH_INFO, both ASCII (the reference
       decodes others as UTF-8, and fixes up a request without PATH_INFO). */
    PyObject *script = NULL;
    found = param(cgi[S_SCRIPT_NAME], &text, &c, &n);
    if (found == UNSUITABLE || (found == FOUND && !all_ascii(c, n))) {
        goto fallback;
    }
    if (found == FOUND) {
        script = text;
    }
    PyObject *path_info;
    if (param(cgi[S_PATH_INFO], &path_info, &c, &n) != FOUND || n == 0 || !all_ascii(c, n)) {
        goto fallback;
    }
    /* raw_path: REQUEST_URI up to its '?' (without one, the reference quotes the path). */
    PyObject *uri;
    const Py_UCS1 *uri_chars;
    Py_ssize_t uri_len;
    if (param(cgi[S_REQUEST_URI], &uri, &uri_chars, &uri_len) != FOUND || uri_len == 0) {
        goto fallback;
    }
    Py_ssize_t raw_len = uri_len;
    const Py_UCS1 *mark = memchr(uri_chars, '?', (size_t)uri_len);
    if (mark != NULL) {
        raw_len = mark - uri_chars;
    }
    /* The method, upper case already (the reference upper-cases others). */
    PyObject *method;
    if (param(cgi[S_REQUEST_METHOD], &method, &c, &n) != FOUND || n == 0) {
        goto fallback;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (c[i] >= 0x80 || (c[i] >= 'a' && c[i] <= 'z')) {
            goto fallback;
        }
    }
    /* The HTTP version, from the reference's cache. */
    PyObject *protocol;
    if (param(cgi[S_SERVER_PROTOCOL], &protocol, &c, &n) != FOUND) {
        goto fallback;
    }
    PyObject *http_version = PyDict_GetItemWithError(http_versions, protocol);
    if (http_version == NULL) {
        if (PyErr_Occurred()) {
            goto error;
        }
        goto fallback;
    }
    /* Ports: absent or empty is None; plain digits are read here. */
    long server_port = 0, remote_port = 0;
    found = param(cgi[S_SERVER_PORT], &text, &c, &n);
    if (found == UNSUITABLE || (found == FOUND && n > 0 && !plain_port(c, n, &server_port))) {
        goto fallback;
    }
    PyObject *remote = NULL;
    found = param(cgi[S_REMOTE_ADDR], &text, &c, &n);
    if (found == UNSUITABLE) {
        goto fallback;
    }
    if (found == FOUND && n > 0) {
        remote = text;
        found = param(cgi[S_REMOTE_PORT], &text, &c, &n);
        if (found == UNSUITABLE || (found == FOUND && n > 0 && !plain_port(c, n, &remote_port))) {
            goto fallback;
        }
    }
    /* The server's host: SERVER_ADDR, or SERVER_NAME if that is empty. */
    PyObject *server_host = NULL;
    found = param(cgi[S_SERVER_ADDR], &text, &c, &n);
    if (found == UNSUITABLE) {
        goto fallback;
    }
    if (found == FOUND && n > 0) {
        server_host = text;
    }
    else {
        found = param(cgi[S_SERVER_NAME], &text, &c, &n);
        if (found == UNSUITABLE) {
            goto fallback;
        }
        if (found == FOUND && n > 0) {
            server_host = text;
        }
    }
    /* https: HTTPS is "on" or "1" in any case, else REQUEST_SCHEME is "https". */
    int https = 0;
    found = param(cgi[S_HTTPS], &text, &c, &n);
    if (found == UNSUITABLE) {
        goto fallback;
    }
    if (found == FOUND) {
        /* ASCII case folding is all .lower() can do here: no latin-1
           character other than 'O', 'N' lowers to 'o' or 'n'. */
        https = (n == 2 && (c[0] | 0x20) == 'o' && (c[1] | 0x20) == 'n') || (n == 1 && c[0] == '1');
    }
    if (!https) {
        found = param(cgi[S_REQUEST_SCHEME], &text, &c, &n);
        if (found == UNSUITABLE) {
            goto fallback;
        }
        https = found == FOUND && n == 5 && memcmp(c, "https", 5) == 0;
    }
    PyObject *query = NULL;
    const Py_UCS1 *query_chars = NULL;
    Py_ssize_t query_len = 0;
    if (param(cgi[S_QUERY_STRING], &query, &query_chars, &query_len) == UNSUITABLE) {
        goto fallback;
    }

    /* The scope, its keys in the reference's order. Nothing can fail from
       here on but memory. */
    scope = new_dict(13);
    if (scope == NULL) {
        goto error;
    }
#define PUT(key, made)                                                  \
    do {                                                                \
        item = (made);                                                  \
        if (item == NULL || PyDict_SetItem(scope, k[key], item) < 0) {  \
            goto error;                                                 \
        }                                                               \
        Py_CLEAR(item);                                                 \
    } while (0)
    PUT(S_type, Py_NewRef(k[S_http]));
    PUT(S_asgi, PyDict_Copy(asgi_info));
    PUT(S_http_version, Py_NewRef(http_version));
    PUT(S_method, Py_NewRef(method));
    PUT(S_scheme, Py_NewRef(https ? k[S_https] : k[S_http]));
    PUT(S_path, script != NULL ? PyUnicode_Concat(script, path_info) : Py_NewRef(path_info));
    PUT(S_raw_path, latin1_bytes(uri_chars, raw_len));
    PUT(S_query_string, latin1_bytes(query_chars, query_len));
    PUT(S_root_path, script != NULL ? Py_NewRef(script) : PyUnicode_New(0, 0));
    PUT(S_headers, Py_NewRef(headers));
    PUT(S_client, remote != NULL ? address(remote, remote_port) : Py_NewRef(Py_None));
    PUT(S_server, server_host != NULL && server_port != 0 ? address(server_host, server_port)
                                                          : Py_NewRef(Py_None));
    PUT(S_extensions, extensions(k, params));
#undef PUT
    Py_DECREF(headers);
    return scope;

fallback:
    Py_XDECREF(scope);
    Py_XDECREF(headers);
    Py_RETURN_NONE;

error:
    Py_XDECREF(item);
    Py_XDECREF(scope);
    Py_XDECREF(headers);
    return NULL;
}

static PyMethodDef speedups_methods[] = {
    {"decode_params", decode_params, METH_O, decode_params_doc},
    {"scan_head", scan_head, METH_O, scan_head_doc},
    {"encode_head", (PyCFunction)(void (*)(void))encode_head, METH_FASTCALL, encode_head_doc},
    {"decode_uwsgi_vars", (PyCFunction)(void (*)(void))decode_uwsgi_vars, METH_FASTCALL,
     decode_uwsgi_vars_doc},
    {"asgi_scope", (PyCFunction)(void (*)(void))asgi_scope, METH_FASTCALL, asgi_scope_doc},
    {NULL, NULL, 0, NULL},
};

static int
speedups_traverse(PyObject *module, visitproc visit, void *arg)
{
    speedups_state *state = PyModule_GetState(module);
    if (state != NULL) {
        for (size_t i = 0; i < CACHE_SLOTS; i++) {
            Py_VISIT(state->names[i]);
            Py_VISIT(state->values[i]);
        }
        for (int i = 0; i < S_COUNT; i++) {
            Py_VISIT(state->strings[i]);
        }
        Py_VISIT(state->content_type);
        Py_VISIT(state->content_length);
    }
    return 0;
}

static int
speedups_clear(PyObject *module)
{
    speedups_state *state = PyModule_GetState(module);
    if (state != NULL) {
        for (size_t i = 0; i < CACHE_SLOTS; i++) {
            Py_CLEAR(state->names[i]);
            Py_CLEAR(state->values[i]);
        }
        for (int i = 0; i < S_COUNT; i++) {
            Py_CLEAR(state->strings[i]);
        }
        Py_CLEAR(state->content_type);
        Py_CLEAR(state->content_length);
    }
    return 0;
}

static void
speedups_free(void *module)
{
    (void)speedups_clear((PyObject *)module);
}

/* Multi-phase init with the string cache as module state (zeroed by
   CPython): each interpreter that loads the module gets its own. */
static PyModuleDef_Slot speedups_slots[] = {
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fcgi._speedups",
    .m_doc = "Optional C versions of hot functions of fcgi.records, fcgi.connection, fcgi.wsgi, fcgi.uwsgi and fcgi.asgi.",
    .m_size = sizeof(speedups_state),
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
    .m_traverse = speedups_traverse,
    .m_clear = speedups_clear,
    .m_free = speedups_free,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
