/*
 * The proxy's relay loops in C: the two directions of one authenticated session, each run
 * by its own thread with blocking sockets, without the GIL.
 *
 * Why C: at one client, a round trip through the proxy is two relayed messages, and in
 * Python each costs a recv_into, a framing loop and a sendall under the GIL: about
 * 15 us more per transaction than pgbouncer (bench/proxy_overhead.py). Here a message
 * that needs no Python costs a recv and a send, nothing else; Python is called (with the
 * GIL) only for what the session must look at:
 *
 *   relay_server: the server's stream, framed by its 5-byte headers. Authentication ('R')
 *     and ParameterStatus ('S') messages of at most 64 KiB are handed whole to
 *     on_message(type, body) *before* the bytes are forwarded, so the session knows what
 *     they say before the client can answer them. Everything is forwarded as it arrived.
 *   relay_client: the client's stream after authentication. Query ('Q') and Parse ('P')
 *     messages of at most max_rewrite bytes are gathered whole and handed to
 *     rewrite(type, body), which returns the whole replacement message or None (forward
 *     the original); with the rewriter's trigger words, only those that hold one of them
 *     (plain SQL then costs no Python at all). Other messages stream through as they
 *     arrive: a COPY is never buffered whole.
 *
 * This is session.py's from_client / UpstreamSide.data_received, message for message; the
 * Python ones stay for the event-loop relay, for `--relay python-threads`, and for a
 * client's startup and authentication. Both functions return None when the peer closes
 * (or the other thread shuts the socket down), raise OSError on a socket error, and
 * re-raise what a callback raised; relay_client returns a str describing a protocol
 * violation (a length out of bounds), for the caller to raise as ProtocolViolation.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#define READ_SIZE (1 << 16)     /* what one recv takes at most (session.py's _READ_SIZE) */
#define MAX_INSPECTED (1 << 16) /* 'R'/'S' messages longer than this are only framed */

static uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) | ((uint32_t) p[2] << 8) | (uint32_t) p[3];
}

/* Both run without the GIL. */
static ssize_t
recv_some(int fd, unsigned char *buf, size_t size)
{
    ssize_t n;

    do
        n = recv(fd, buf, size, 0);
    while (n < 0 && errno == EINTR);
    return n;
}

static int
send_all(int fd, const unsigned char *p, size_t len)
{
    while (len > 0)
    {
        /* MSG_NOSIGNAL: a peer gone is EPIPE here, never a SIGPIPE for the process */
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

        if (n < 0)
        {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t) n;
    }
    return 0;
}

/* What a relay returns once its loop has ended, the GIL held: OSError for a socket error
 * (errno), else the protocol violation's description, else None (the peer closed). */
static PyObject *
relay_result(int error, const char *violation)
{
    if (error)
    {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (violation != NULL && violation[0])
        return PyUnicode_FromString(violation);
    Py_RETURN_NONE;
}

/*
 * on_message(type, body) with the GIL taken for the call. Returns 0, or -1 with the
 * exception set and the GIL held (the caller then leaves).
 */
static int
call_message(PyThreadState **ts, PyObject *callback, int type, const unsigned char *body, size_t len)
{
    PyObject   *result;

    PyEval_RestoreThread(*ts);
    result = PyObject_CallFunction(callback, "iy#", type, (const char *) body, (Py_ssize_t) len);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    *ts = PyEval_SaveThread();
    return 0;
}

static PyObject *
relay_server(PyObject *module, PyObject *args)
{
    int         server_fd, client_fd;
    PyObject   *on_message;
    unsigned char *buf, *inspected;
    unsigned char header[5];
    size_t      header_len = 0;
    uint64_t    skip = 0;       /* body bytes of the current message still to come */
    size_t      need = 0, have = 0; /* an inspected message's body: its length, and what is in */
    int         inspecting = 0;
    int         type = 0;
    int         error = 0;      /* errno of a failed recv/send */
    PyThreadState *ts;

    if (!PyArg_ParseTuple(args, "iiO:relay_server", &server_fd, &client_fd, &on_message))
        return NULL;
    buf = PyMem_RawMalloc(READ_SIZE);
    inspected = PyMem_RawMalloc(MAX_INSPECTED);
    if (buf == NULL || inspected == NULL)
    {
        PyMem_RawFree(buf);
        PyMem_RawFree(inspected);
        return PyErr_NoMemory();
    }
    ts = PyEval_SaveThread();
    for (;;)
    {
        ssize_t     got = recv_some(server_fd, buf, READ_SIZE);
        size_t      n, pos = 0;

        if (got == 0)
            break;
        if (got < 0)
        {
            error = errno;
            break;
        }
        n = (size_t) got;
        while (pos < n)
        {
            size_t      take;

            if (skip)
            {
                take = skip < n - pos ? (size_t) skip : n - pos;
                skip -= take;
                pos += take;
                continue;
            }
            if (inspecting)
            {
                take = need - have < n - pos ? need - have : n - pos;
                memcpy(inspected + have, buf + pos, take);
                have += take;
                pos += take;
                if (have == need)
                {
                    inspecting = 0;
                    if (call_message(&ts, on_message, type, inspected, have) < 0)
                        goto failed;
                }
                continue;
            }
            take = 5 - header_len < n - pos ? 5 - header_len : n - pos;
            memcpy(header + header_len, buf + pos, take);
            header_len += take;
            pos += take;
            if (header_len < 5)
                break;          /* the rest of the header comes with the next read */
            header_len = 0;
            {
                uint32_t    length = be32(header + 1);
                uint64_t    body = length >= 4 ? (uint64_t) length - 4 : 0;

                if ((header[0] == 'S' || header[0] == 'R') && (uint64_t) length + 1 <= MAX_INSPECTED)
                {
                    type = header[0];
                    need = (size_t) body;
                    have = 0;
                    if (need == 0)
                    {
                        if (call_message(&ts, on_message, type, inspected, 0) < 0)
                            goto failed;
                    }
                    else
                        inspecting = 1;
                }
                else
                    skip = body;
            }
        }
        if (send_all(client_fd, buf, n) < 0)
        {
            error = errno;
            break;
        }
    }
    PyEval_RestoreThread(ts);
    PyMem_RawFree(buf);
    PyMem_RawFree(inspected);
    return relay_result(error, NULL);

failed:                         /* the GIL is held, the exception set */
    PyMem_RawFree(buf);
    PyMem_RawFree(inspected);
    return NULL;
}

/*
 * rewrite(type, body) with the GIL taken: 0 with the replacement in out, out_len (malloc'd,
 * NULL when the original is to be forwarded), or -1 with the exception set and the GIL held.
 */
static int
call_rewrite(PyThreadState **ts, PyObject *rewrite, int type, const unsigned char *body, size_t len,
             unsigned char **out, size_t *out_len)
{
    PyObject   *result;

    *out = NULL;
    *out_len = 0;
    PyEval_RestoreThread(*ts);
    result = PyObject_CallFunction(rewrite, "iy#", type, (const char *) body, (Py_ssize_t) len);
    if (result == NULL)
        return -1;
    if (result != Py_None)
    {
        char       *data;
        Py_ssize_t  size;

        if (PyBytes_AsStringAndSize(result, &data, &size) < 0)
        {
            Py_DECREF(result);
            return -1;
        }
        /* a copy, so that the send below needs no GIL to keep the object alive */
        *out = PyMem_RawMalloc(size > 0 ? (size_t) size : 1);
        if (*out == NULL)
        {
            Py_DECREF(result);
            PyErr_NoMemory();
            return -1;
        }
        memcpy(*out, data, (size_t) size);
        *out_len = (size_t) size;
    }
    Py_DECREF(result);
    *ts = PyEval_SaveThread();
    return 0;
}

#define MAX_WORDS 32

/*
 * Whether body holds one of the words (lowercase ASCII), ASCII letters compared in any case.
 * The preprocessor returns None for any text without one of its trigger words in
 * str.lower(); in every client encoding PostgreSQL allows, ASCII characters are their own
 * bytes, so a text whose bytes hold none of them needs no call to Python at all.
 */
static int
holds_a_word(const unsigned char *body, size_t len, const char *const *words, const size_t *lengths, int n_words)
{
    for (size_t i = 0; i < len; i++)
    {
        unsigned char c = body[i];

        if (c >= 'A' && c <= 'Z')
            c += 'a' - 'A';
        for (int w = 0; w < n_words; w++)
        {
            const char *word = words[w];
            size_t      k;

            if ((unsigned char) word[0] != c || lengths[w] > len - i)
                continue;
            for (k = 1; k < lengths[w]; k++)
            {
                unsigned char d = body[i + k];

                if (d >= 'A' && d <= 'Z')
                    d += 'a' - 'A';
                if (d != (unsigned char) word[k])
                    break;
            }
            if (k == lengths[w])
                return 1;
        }
    }
    return 0;
}

/* A tuple of non-empty lowercase ASCII bytes into words/lengths: their count, or -1 with
 * TypeError set. The pointers live as long as the tuple. */
static int
parse_words(PyObject *trigger, const char **words, size_t *lengths)
{
    Py_ssize_t  n;

    if (!PyTuple_Check(trigger) || (n = PyTuple_GET_SIZE(trigger)) > MAX_WORDS)
    {
        PyErr_SetString(PyExc_TypeError, "trigger words must be a tuple of at most 32 bytes");
        return -1;
    }
    for (Py_ssize_t w = 0; w < n; w++)
    {
        PyObject   *word = PyTuple_GET_ITEM(trigger, w);
        Py_ssize_t  size = PyBytes_Check(word) ? PyBytes_GET_SIZE(word) : 0;
        const char *data = size ? PyBytes_AS_STRING(word) : NULL;

        for (Py_ssize_t k = 0; k < size && data != NULL; k++)
            if ((unsigned char) data[k] >= 0x80 || (data[k] >= 'A' && data[k] <= 'Z'))
                data = NULL;
        if (data == NULL)
        {
            PyErr_SetString(PyExc_TypeError, "each trigger word must be non-empty lowercase ASCII bytes");
            return -1;
        }
        words[w] = data;
        lengths[w] = (size_t) size;
    }
    return (int) n;
}

static PyObject *
relay_client(PyObject *module, PyObject *args)
{
    int         client_fd, server_fd;
    unsigned long long max_length, max_rewrite;
    PyObject   *rewrite;
    unsigned char *buf;
    unsigned char *message = NULL;  /* a Query/Parse gathered across reads */
    size_t      message_need = 0, message_have = 0;
    size_t      carry = 0;      /* a partial header (< 5 bytes) kept at the front of buf */
    uint64_t    skip = 0;       /* body bytes of the current pass-through message still to come */
    int         error = 0;
    char        violation[96] = "";
    PyObject   *trigger = Py_None;
    const char *words[MAX_WORDS];
    size_t      lengths[MAX_WORDS];
    int         n_words = -1;   /* -1: no trigger words, every Query/Parse goes to rewrite */
    PyThreadState *ts;

    if (!PyArg_ParseTuple(args, "iiKKO|O:relay_client", &client_fd, &server_fd, &max_length, &max_rewrite,
                          &rewrite, &trigger))
        return NULL;
    /* the tuple is held by args for the whole call, and with it the words' bytes */
    if (trigger != Py_None && (n_words = parse_words(trigger, words, lengths)) < 0)
        return NULL;
    buf = PyMem_RawMalloc(READ_SIZE);
    if (buf == NULL)
        return PyErr_NoMemory();
    ts = PyEval_SaveThread();
    for (;;)
    {
        ssize_t     got = recv_some(client_fd, buf + carry, READ_SIZE - carry);
        size_t      n, pos = 0, out = 0; /* buf[out:pos] is forwarded as it arrived */

        if (got == 0)
            break;
        if (got < 0)
        {
            error = errno;
            break;
        }
        n = carry + (size_t) got;
        carry = 0;
        if (message != NULL)
        {
            size_t      take = message_need - message_have < n ? message_need - message_have : n;

            memcpy(message + message_have, buf, take);
            message_have += take;
            pos = out = take;
            if (message_have < message_need)
                continue;
            {
                unsigned char *new;
                size_t      new_len;

                if (n_words < 0 || holds_a_word(message + 5, message_need - 5, words, lengths, n_words))
                {
                    if (call_rewrite(&ts, rewrite, message[0], message + 5, message_need - 5, &new, &new_len) < 0)
                        goto failed;
                }
                else
                    new = NULL, new_len = 0;
                if (send_all(server_fd, new ? new : message, new ? new_len : message_need) < 0)
                    error = errno;
                PyMem_RawFree(new);
                PyMem_RawFree(message);
                message = NULL;
                if (error)
                    break;
            }
        }
        else if (skip)
        {
            size_t      take = skip < n ? (size_t) skip : n;

            skip -= take;
            pos = take;
        }
        while (n - pos >= 5)
        {
            int         type = buf[pos];
            uint32_t    length = be32(buf + pos + 1);
            uint64_t    end = (uint64_t) pos + 1 + length;

            if (length < 4 || length > max_length)
            {
                snprintf(violation, sizeof(violation), "invalid message length %u (type %#04x)",
                         (unsigned) length, (unsigned) type);
                /* the whole messages before it go on; nothing of it or after it */
                if (pos > out && send_all(server_fd, buf + out, pos - out) < 0)
                    error = errno;
                break;
            }
            if ((type == 'Q' || type == 'P') && length <= max_rewrite)
            {
                if (end > n)
                {
                    /* the rest comes later: forward what precedes it, gather it whole */
                    if (pos > out && send_all(server_fd, buf + out, pos - out) < 0)
                    {
                        error = errno;
                        break;
                    }
                    message_need = (size_t) length + 1;
                    message = PyMem_RawMalloc(message_need);
                    if (message == NULL)
                    {
                        PyEval_RestoreThread(ts);
                        PyMem_RawFree(buf);
                        return PyErr_NoMemory();
                    }
                    message_have = n - pos;
                    memcpy(message, buf + pos, message_have);
                    pos = out = n;
                    break;
                }
                {
                    unsigned char *new;
                    size_t      new_len;

                    if (n_words >= 0 && !holds_a_word(buf + pos + 5, (size_t) length - 4, words, lengths, n_words))
                        new = NULL, new_len = 0; /* plain SQL: no Python, no GIL */
                    else if (call_rewrite(&ts, rewrite, type, buf + pos + 5, (size_t) length - 4, &new, &new_len) < 0)
                        goto failed;
                    if (new != NULL)
                    {
                        if ((pos > out && send_all(server_fd, buf + out, pos - out) < 0)
                            || send_all(server_fd, new, new_len) < 0)
                            error = errno;
                        PyMem_RawFree(new);
                        if (error)
                            break;
                        out = (size_t) end;
                    }
                }
            }
            else if (end > n)
            {
                /* a pass-through message (COPY data): forward what is here, the rest as it comes */
                skip = end - n;
                pos = n;
                break;
            }
            pos = (size_t) end;
        }
        if (error || violation[0])
            break;
        if (pos > out && send_all(server_fd, buf + out, pos - out) < 0)
        {
            error = errno;
            break;
        }
        if (pos < n)
        {
            carry = n - pos;    /* < 5: a header cut by the read */
            memmove(buf, buf + pos, carry);
        }
    }
    PyEval_RestoreThread(ts);
    PyMem_RawFree(buf);
    PyMem_RawFree(message);
    return relay_result(error, violation);

failed:
    PyMem_RawFree(buf);
    PyMem_RawFree(message);
    return NULL;
}

/* holds_a_word(body, words) for the tests: what relay_client decides for one message */
static PyObject *
py_holds_a_word(PyObject *module, PyObject *args)
{
    Py_buffer   body;
    PyObject   *trigger;
    const char *words[MAX_WORDS];
    size_t      lengths[MAX_WORDS];
    int         n,
                found = 0;

    if (!PyArg_ParseTuple(args, "y*O:holds_a_word", &body, &trigger))
        return NULL;
    n = parse_words(trigger, words, lengths);
    if (n >= 0)
        found = holds_a_word(body.buf, (size_t) body.len, words, lengths, n);
    PyBuffer_Release(&body);
    return n < 0 ? NULL : PyBool_FromLong(found);
}

static PyMethodDef relay_methods[] = {
    {"holds_a_word", py_holds_a_word, METH_VARARGS,
     "holds_a_word(body, words): whether body holds one of the lowercase ASCII words, in any case."},
    {"relay_server", relay_server, METH_VARARGS,
     "relay_server(server_fd, client_fd, on_message): relay the server's stream to the client until "
     "it closes, calling on_message(type, body) for each Authentication and ParameterStatus message."},
    {"relay_client", relay_client, METH_VARARGS,
     "relay_client(client_fd, server_fd, max_length, max_rewrite, rewrite, trigger_words=None): relay "
     "the client's stream to the server until it closes, replacing each Query/Parse by rewrite(type, "
     "body) unless that is None; with trigger_words (a tuple of lowercase ASCII bytes), rewrite is "
     "called only for messages holding one of them, in any case. Returns None, or a str describing a "
     "protocol violation."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "relay",
    .m_doc = "The proxy's relay loops in C (see session.py).",
    .m_size = -1,
    .m_methods = relay_methods,
};

PyMODINIT_FUNC
PyInit_relay(void)
{
    return PyModule_Create(&relay_module);
}
