/* The accepting path of edge_agent.sources.line_parser for plain numeric CSV lines, in C.

   csv_rows(lines, out, lo, hi, max_len) -> None | list[int]

   lines:   a list of bytes, one sensor line each
   out:     a writable C-contiguous float32 buffer of len(lines) * n values (row i at i * n)
   lo, hi:  float64 buffers of n values, the inclusive bounds of each field
   max_len: the longest line taken, in bytes

   Row i of `out` is written for every line this accepts; the result is None when it accepted
   them all, or else the (ascending) indices of the lines it did not. It accepts a strict subset
   of what LineParser.values accepts, with the same values: after stripping ASCII whitespace,
   exactly n comma-separated fields, each of optional spaces or tabs, a plain decimal number
   ([+-] digits [. digits] [e|E [+-] digits], at least one digit before the exponent), optional
   spaces or tabs; each value within its bounds. Everything else (NaN, infinity, underscores,
   a field too long, control bytes, not ASCII, another type than bytes) is left to the Python
   path, which says what is wrong with the line, or takes it.

   A value is the double float() gives (correctly rounded): exactly computed when its digits
   form an integer below 2**53 and its power of ten is within 10**22 (both operands exact, one
   rounding: Clinger's fast path), else by PyOS_string_to_double, what float() itself calls.
   It is then rounded to float32, as numpy's float64 -> float32 conversion does. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <string.h>

#define MAX_FIELD 64 /* longer numbers go to the Python path */

/* 10**0 .. 10**22: each exactly a double */
static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                               1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                               1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
#define FAST_PATH 1 /* double arithmetic rounds once, to double (not x87 extended) */
#else
#define FAST_PATH 0
#endif

static inline int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static inline int is_digit(char c) { return c >= '0' && c <= '9'; }

/* Parse one number in [p, end) (no surrounding spaces); 0 on success with *value set. */
static int parse_number(const char *p, const char *end, double *value) {
    const char *start = p;
    Py_ssize_t len = end - p;
    if (len <= 0 || len > MAX_FIELD) return -1;
    int negative = 0;
    if (*p == '+' || *p == '-') {
        negative = *p == '-';
        p++;
    }
    unsigned long long mantissa = 0;
    int digits = 0;       /* significant digits in the mantissa */
    int any = 0;          /* digits seen before the exponent */
    int exponent = 0;     /* the power of ten the mantissa is scaled by */
    int exact = 1;        /* the mantissa holds every digit */
    for (; p < end && is_digit(*p); p++) {
        any = 1;
        if (mantissa == 0 && *p == '0') continue; /* leading zeros */
        if (digits < 19) {
            mantissa = mantissa * 10 + (unsigned long long)(*p - '0');
            digits++;
        } else {
            exact = 0;
        }
    }
    if (p < end && *p == '.') {
        p++;
        for (; p < end && is_digit(*p); p++) {
            any = 1;
            if (mantissa == 0 && *p == '0') {
                exponent--;
                continue;
            }
            if (digits < 19) {
                mantissa = mantissa * 10 + (unsigned long long)(*p - '0');
                digits++;
                exponent--;
            } else {
                exact = 0;
            }
        }
    }
    if (!any) return -1;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int exp_negative = 0;
        if (p < end && (*p == '+' || *p == '-')) {
            exp_negative = *p == '-';
            p++;
        }
        if (p >= end || !is_digit(*p)) return -1;
        int e = 0;
        for (; p < end && is_digit(*p); p++) {
            if (e < 100000) e = e * 10 + (*p - '0');
        }
        exponent += exp_negative ? -e : e;
    }
    if (p != end) return -1;
    if (FAST_PATH && exact && mantissa < (1ULL << 53) && exponent >= -22 && exponent <= 22) {
        double m = (double)mantissa;
        double v = exponent < 0 ? m / POW10[-exponent] : m * POW10[exponent];
        *value = negative ? -v : v;
        return 0;
    }
    char buf[MAX_FIELD + 1];
    memcpy(buf, start, (size_t)len);
    buf[len] = '\0';
    char *stop = NULL;
    double v = PyOS_string_to_double(buf, &stop, NULL);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (stop != buf + len) return -1;
    *value = v;
    return 0;
}

/* One line into row[0..n); 0 when taken. */
static int parse_line(const char *p, Py_ssize_t len, Py_ssize_t max_len, Py_ssize_t n,
                      const double *lo, const double *hi, float *row) {
    if (len > max_len) return -1;
    const char *end = p + len;
    while (p < end && is_space(*p)) p++;
    while (end > p && is_space(end[-1])) end--;
    if (p == end) return -1;
    for (Py_ssize_t f = 0; f < n; f++) {
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *q = p;
        while (q < end && *q != ',' && *q != ' ' && *q != '\t') q++;
        double v;
        if (parse_number(p, q, &v) != 0) return -1;
        while (q < end && (*q == ' ' || *q == '\t')) q++;
        if (f + 1 < n) {
            if (q >= end || *q != ',') return -1;
            q++;
        } else if (q != end) {
            return -1;
        }
        if (!(lo[f] <= v && v <= hi[f])) return -1;
        row[f] = (float)v;
        p = q;
    }
    return 0;
}

static int get_buffer(PyObject *obj, Py_buffer *view, int flags, const char *what) {
    if (PyObject_GetBuffer(obj, view, flags | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) return -1;
    if (view->format == NULL || view->itemsize != (what[0] == 'o' ? 4 : 8)) {
        PyErr_Format(PyExc_TypeError, "csv_rows: %s has the wrong item type", what);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *csv_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "csv_rows(lines, out, lo, hi, max_len)");
        return NULL;
    }
    PyObject *lines = args[0];
    if (!PyList_Check(lines)) {
        PyErr_SetString(PyExc_TypeError, "csv_rows: lines must be a list");
        return NULL;
    }
    Py_ssize_t max_len = PyLong_AsSsize_t(args[4]);
    if (max_len == -1 && PyErr_Occurred()) return NULL;
    Py_buffer out, lo, hi;
    if (get_buffer(args[1], &out, PyBUF_WRITABLE, "out") != 0) return NULL;
    if (get_buffer(args[2], &lo, PyBUF_SIMPLE, "lo") != 0) {
        PyBuffer_Release(&out);
        return NULL;
    }
    if (get_buffer(args[3], &hi, PyBUF_SIMPLE, "hi") != 0) {
        PyBuffer_Release(&out);
        PyBuffer_Release(&lo);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t count = PyList_GET_SIZE(lines);
    Py_ssize_t n = lo.len / 8;
    if (n < 1 || hi.len != lo.len || out.len != count * n * 4) {
        PyErr_SetString(PyExc_ValueError,
                        "csv_rows: expected len(lo) == len(hi) >= 1 and len(out) == "
                        "len(lines) * len(lo)");
        goto done;
    }
    PyObject *bad = NULL;
    float *rows = (float *)out.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *line = PyList_GET_ITEM(lines, i);
        int ok = PyBytes_CheckExact(line) &&
                 parse_line(PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line), max_len, n,
                            (const double *)lo.buf, (const double *)hi.buf, rows + i * n) == 0;
        if (!ok) {
            if (bad == NULL && (bad = PyList_New(0)) == NULL) goto done;
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(bad, index) != 0) {
                Py_XDECREF(index);
                Py_DECREF(bad);
                goto done;
            }
            Py_DECREF(index);
        }
    }
    if (bad == NULL) {
        result = Py_None;
        Py_INCREF(result);
    } else {
        result = bad;
    }
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&lo);
    PyBuffer_Release(&hi);
    return result;
}

static PyMethodDef methods[] = {
    {"csv_rows", (PyCFunction)(void (*)(void))csv_rows, METH_FASTCALL,
     "csv_rows(lines, out, lo, hi, max_len) -> None | list[int]: parse plain numeric CSV "
     "lines into float32 rows; the indices of the lines left to the Python path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_csvrows", "Plain numeric CSV sensor lines into float32 rows.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__csvrows(void) { return PyModule_Create(&module); }
