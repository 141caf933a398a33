/* The drift monitor's two loops over every value, in C (edge_agent.drift).

   count_slots(x, points, starts, counts) -> bool

   x:      C-contiguous float64 rows of n features (len(x) a multiple of n)
   points: float64, each feature's sorted grid values one feature after another (its -inf and
           +inf sentinels included); feature j's are points[starts[j]:starts[j + 1]]
   starts: int64, n + 1 offsets into points
   counts: int64, 2 * len(points) + 1 slots, added to in place

   A value v of feature j lands in slot 2 * (starts[j] + k) + (points[starts[j] + k] == v), k the
   number of the feature's points below v: what Layout.slots gives (one searchsorted over the
   complex grid, feature + 1j * value), then one bincount. Returns False, counting nothing, if
   any value is not finite (the caller then counts the finite ones its own way).

   ks_gaps(le, lt, total, ref_le, ref_lt, starts, out) -> None

   le, lt:         int64 (windows, points): values at or below, and below, each KS point
   total:          float64 (windows, features): values counted, at least 1
   ref_le, ref_lt: float64 (points): the reference's ECDF at, and just below, each point
   starts:         int64 (features): each feature's first point (points are grouped by feature)
   out:            float64 (windows, features), written: the largest of
                   |ref_le - le / total| and |ref_lt - lt / total| over the feature's points
                   (0 for a feature without points), what DriftMonitor._ks computes in numpy */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

#define LANES 16 /* values searched side by side */
#define ITEM(view, type, i) (((const type *)(view).buf)[i])

static int get(PyObject *obj, Py_buffer *view, int flags, Py_ssize_t itemsize, char kind,
               const char *name) {
    if (PyObject_GetBuffer(obj, view, flags | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) return -1;
    const char *f = view->format;
    /* int64 is 'l' where long has 64 bits, 'q' elsewhere (32-bit ARM) */
    int same = f != NULL && f[1] == '\0' && (f[0] == kind || (kind == 'l' && f[0] == 'q'));
    if (view->itemsize != itemsize || !same) {
        PyErr_Format(PyExc_TypeError, "%s has the wrong item type", name);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Count `lanes` values (v[0], v[stride], ...) of one feature, whose points are grid[lo:hi]: each
   goes to slot 2k (k: the first of the points not below it; there is one, the +inf sentinel),
   or 2k + 1 if it equals that point. Branch-free, and the lanes' searches are independent, so
   the CPU runs them side by side instead of waiting on one chain of loads. */
static inline void search(const double *grid, int64_t lo, int64_t hi, const double *v,
                          Py_ssize_t stride, Py_ssize_t lanes, int64_t *slots) {
    int64_t at[LANES];
    double x[LANES];
    for (Py_ssize_t t = 0; t < lanes; t++) {
        at[t] = lo;
        x[t] = v[t * stride];
    }
    for (int64_t len = hi - lo; len > 1;) {
        int64_t half = len / 2;
        for (Py_ssize_t t = 0; t < lanes; t++) at[t] += grid[at[t] + half - 1] < x[t] ? half : 0;
        len -= half;
    }
    for (Py_ssize_t t = 0; t < lanes; t++) slots[2 * at[t] + (grid[at[t]] == x[t])] += 1;
}

static PyObject *count_slots(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "count_slots(x, points, starts, counts)");
        return NULL;
    }
    Py_buffer x, points, starts, counts;
    PyObject *result = NULL;
    if (get(args[0], &x, PyBUF_SIMPLE, 8, 'd', "x") != 0) return NULL;
    if (get(args[1], &points, PyBUF_SIMPLE, 8, 'd', "points") != 0) goto fail_x;
    if (get(args[2], &starts, PyBUF_SIMPLE, 8, 'l', "starts") != 0) goto fail_points;
    if (get(args[3], &counts, PyBUF_WRITABLE, 8, 'l', "counts") != 0) goto fail_starts;

    const double *values = (const double *)x.buf, *grid = (const double *)points.buf;
    const int64_t *start = (const int64_t *)starts.buf;
    int64_t *slots = (int64_t *)counts.buf;
    Py_ssize_t n = starts.len / 8 - 1, total = x.len / 8, n_points = points.len / 8;
    int ok = n >= 1 && total % n == 0 && counts.len / 8 == 2 * n_points + 1 && start[0] == 0 &&
             start[n] == n_points;
    for (Py_ssize_t j = 0; ok && j < n; j++) ok = start[j] < start[j + 1];
    if (!ok) {
        PyErr_SetString(PyExc_ValueError,
                        "count_slots: expected len(x) % n == 0, starts rising from 0 to "
                        "len(points), and len(counts) == 2 * len(points) + 1");
        goto done;
    }
    for (Py_ssize_t i = 0; i < total; i++) {
        if (!isfinite(values[i])) {
            result = Py_False;
            Py_INCREF(result);
            goto done;
        }
    }
    Py_ssize_t rows = total / n;
    for (Py_ssize_t j = 0; j < n; j++) { /* feature by feature: one grid, LANES values at once */
        Py_ssize_t r = 0;
        for (; r + LANES <= rows; r += LANES)
            search(grid, start[j], start[j + 1], values + r * n + j, n, LANES, slots);
        if (r < rows) search(grid, start[j], start[j + 1], values + r * n + j, n, rows - r, slots);
    }
    result = Py_True;
    Py_INCREF(result);
done:
    PyBuffer_Release(&counts);
fail_starts:
    PyBuffer_Release(&starts);
fail_points:
    PyBuffer_Release(&points);
fail_x:
    PyBuffer_Release(&x);
    return result;
}

static PyObject *ks_gaps(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "ks_gaps(le, lt, total, ref_le, ref_lt, starts, out)");
        return NULL;
    }
    static const char kinds[] = {'l', 'l', 'd', 'd', 'd', 'l', 'd'};
    static const char *names[] = {"le", "lt", "total", "ref_le", "ref_lt", "starts", "out"};
    Py_buffer v[7];
    int got = 0;
    PyObject *result = NULL;
    for (; got < 7; got++) {
        int flags = got == 6 ? PyBUF_WRITABLE : PyBUF_SIMPLE;
        if (get(args[got], &v[got], flags, 8, kinds[got], names[got]) != 0) goto done;
    }
    Py_ssize_t points = v[3].len / 8, features = v[5].len / 8;
    Py_ssize_t windows = features ? v[2].len / 8 / features : 0;
    int ok = features >= 1 && v[4].len == v[3].len && v[0].len == windows * points * 8 &&
             v[1].len == v[0].len && v[2].len == windows * features * 8 && v[6].len == v[2].len;
    for (Py_ssize_t j = 0; ok && j < features; j++) {
        int64_t at = ITEM(v[5], int64_t, j);
        int64_t next = j + 1 < features ? ITEM(v[5], int64_t, j + 1) : points;
        ok = 0 <= at && at <= next && next <= points;
    }
    if (!ok) {
        PyErr_SetString(PyExc_ValueError,
                        "ks_gaps: expected le and lt of (windows, points), total and out of "
                        "(windows, features), and starts rising within the points");
        goto done;
    }
    double *out = (double *)v[6].buf;
    for (Py_ssize_t w = 0; w < windows; w++) {
        for (Py_ssize_t j = 0; j < features; j++) {
            int64_t at = ITEM(v[5], int64_t, j);
            int64_t next = j + 1 < features ? ITEM(v[5], int64_t, j + 1) : points;
            double total = ITEM(v[2], double, w * features + j), best = 0.0;
            for (int64_t p = at; p < next; p++) {
                double a = fabs(ITEM(v[3], double, p) - (double)ITEM(v[0], int64_t, w * points + p) / total);
                double b = fabs(ITEM(v[4], double, p) - (double)ITEM(v[1], int64_t, w * points + p) / total);
                double gap = a > b ? a : b;
                if (gap > best) best = gap;
            }
            out[w * features + j] = best;
        }
    }
    result = Py_None;
    Py_INCREF(result);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&v[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"count_slots", (PyCFunction)(void (*)(void))count_slots, METH_FASTCALL,
     "count_slots(x, points, starts, counts) -> bool: add each value's grid slot to counts."},
    {"ks_gaps", (PyCFunction)(void (*)(void))ks_gaps, METH_FASTCALL,
     "ks_gaps(le, lt, total, ref_le, ref_lt, starts, out): each window's and feature's KS "
     "statistic."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_drift", "The drift monitor's loops over every value.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__drift(void) { return PyModule_Create(&module); }
