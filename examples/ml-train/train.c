/* ml-train: logistic regression trained by SGD, as a maskd job.
 *
 * Reads a CSV under /in (header row, numeric feature columns, the last column
 * a 0/1 label), shuffles it with a seeded PRNG, splits it into train and test
 * sets, standardises the features with the train set's mean and standard
 * deviation, and trains by stochastic gradient descent on the log loss with a
 * small L2 penalty. Writes /out/model.json (weights, bias and the
 * standardisation) and /out/metrics.json (accuracy, loss per epoch) and prints
 * the accuracy.
 *
 *   train EPOCHS LEARNING_RATE SEED [CSV] [TEST_FRACTION]
 *
 * CSV defaults to /in/data/exams.csv, TEST_FRACTION to 0.2. Everything is
 * deterministic: the same arguments and data give the same bytes everywhere
 * (wasm floats are IEEE 754 with no fused multiply-add).
 *
 * Build: make (clang --target=wasm32-wasi). Run: mask submit job.toml
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FEATURES 64
#define MAX_LINE 4096
#define L2 1e-4

typedef struct {
    int rows, cols;           /* cols = features; the label is kept apart */
    char names[MAX_FEATURES][64];
    double *x;                /* rows * cols, row major */
    int *y;
} Dataset;

static void die(int code, const char *msg, const char *detail) {
    fprintf(stderr, "train: %s%s%s\n", msg, detail ? ": " : "", detail ? detail : "");
    exit(code);
}

/* splitmix64: small, fast and the same on every platform */
static uint64_t rng_state;
static uint64_t rng_next(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static uint32_t rng_below(uint32_t n) { return (uint32_t)(rng_next() % n); }

static void shuffle(int *idx, int n) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below((uint32_t)i + 1);
        int t = idx[i]; idx[i] = idx[j]; idx[j] = t;
    }
}

static void strip_eol(char *s) {
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r')) s[--n] = '\0';
}

static void load_csv(const char *path, Dataset *d) {
    FILE *f = fopen(path, "r");
    if (!f) die(2, "cannot open the dataset", path);
    char line[MAX_LINE];
    if (!fgets(line, sizeof line, f)) die(2, "the dataset is empty", path);
    strip_eol(line);
    int ncols = 0;
    for (char *tok = strtok(line, ","); tok; tok = strtok(NULL, ",")) {
        if (ncols >= MAX_FEATURES) die(2, "too many columns", path);
        snprintf(d->names[ncols++], sizeof d->names[0], "%s", tok);
    }
    if (ncols < 2) die(2, "need at least one feature column and a label column", path);
    d->cols = ncols - 1;
    int cap = 1024;
    d->x = malloc((size_t)cap * d->cols * sizeof *d->x);
    d->y = malloc((size_t)cap * sizeof *d->y);
    d->rows = 0;
    int lineno = 1;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        strip_eol(line);
        if (!line[0]) continue;
        if (d->rows == cap) {
            cap *= 2;
            d->x = realloc(d->x, (size_t)cap * d->cols * sizeof *d->x);
            d->y = realloc(d->y, (size_t)cap * sizeof *d->y);
        }
        if (!d->x || !d->y) die(12, "out of memory", NULL);
        char *p = line;
        for (int c = 0; c < ncols; c++) {
            char *end;
            errno = 0;
            double v = strtod(p, &end);
            int last = c == ncols - 1;
            if (end == p || errno || *end != (last ? '\0' : ',')) {
                char where[64];
                snprintf(where, sizeof where, "line %d, column %d", lineno, c + 1);
                die(2, "not a number (or wrong column count)", where);
            }
            if (last) {
                if (v != 0.0 && v != 1.0) {
                    char where[64];
                    snprintf(where, sizeof where, "line %d", lineno);
                    die(2, "the label must be 0 or 1", where);
                }
                d->y[d->rows] = (int)v;
            } else {
                d->x[(size_t)d->rows * d->cols + c] = v;
            }
            p = end + 1;
        }
        d->rows++;
    }
    fclose(f);
    if (d->rows < 10) die(2, "need at least 10 rows", path);
}

static double sigmoid(double z) {
    if (z >= 0) return 1.0 / (1.0 + exp(-z));
    double e = exp(z);
    return e / (1.0 + e);
}

typedef struct {
    int cols;
    double w[MAX_FEATURES], b, mean[MAX_FEATURES], std[MAX_FEATURES];
} Model;

/* the logit for raw row r: standardise, then w.x + b, in a fixed order */
static double logit(const Model *m, const double *row) {
    double z = m->b;
    for (int c = 0; c < m->cols; c++) z += m->w[c] * ((row[c] - m->mean[c]) / m->std[c]);
    return z;
}

/* mean log loss and the number of correct predictions over idx[0..n) */
static double evaluate(const Model *m, const Dataset *d, const int *idx, int n, int *correct) {
    double loss = 0;
    int ok = 0;
    for (int i = 0; i < n; i++) {
        const double *row = d->x + (size_t)idx[i] * d->cols;
        double z = logit(m, row);
        double p = sigmoid(z);
        if (p < 1e-12) p = 1e-12;
        if (p > 1 - 1e-12) p = 1 - 1e-12;
        int y = d->y[idx[i]];
        loss -= y ? log(p) : log(1 - p);
        ok += (z >= 0) == (y == 1);
    }
    *correct = ok;
    return n ? loss / n : 0;
}

static void print_array(FILE *f, const double *v, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++) fprintf(f, "%s%.17g", i ? ", " : "", v[i]);
    fputc(']', f);
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 6) {
        fprintf(stderr, "usage: train EPOCHS LEARNING_RATE SEED [CSV] [TEST_FRACTION]\n");
        return 64;
    }
    char *end;
    long epochs = strtol(argv[1], &end, 10);
    if (*end || epochs < 1 || epochs > 100000) die(64, "EPOCHS must be 1..100000", argv[1]);
    double lr = strtod(argv[2], &end);
    if (*end || !(lr > 0 && lr <= 10)) die(64, "LEARNING_RATE must be in (0, 10]", argv[2]);
    unsigned long long seed = strtoull(argv[3], &end, 10);
    if (*end || argv[3][0] == '-' || !argv[3][0]) die(64, "SEED must be a non-negative integer", argv[3]);
    const char *path = argc > 4 ? argv[4] : "/in/data/exams.csv";
    double test_fraction = 0.2;
    if (argc > 5) {
        test_fraction = strtod(argv[5], &end);
        if (*end || !(test_fraction > 0 && test_fraction < 1))
            die(64, "TEST_FRACTION must be in (0, 1)", argv[5]);
    }

    Dataset d;
    load_csv(path, &d);
    rng_state = seed;

    int *idx = malloc((size_t)d.rows * sizeof *idx);
    if (!idx) die(12, "out of memory", NULL);
    for (int i = 0; i < d.rows; i++) idx[i] = i;
    shuffle(idx, d.rows);
    int n_test = (int)(d.rows * test_fraction + 0.5);
    if (n_test < 1) n_test = 1;
    int n_train = d.rows - n_test;
    int *train = idx, *test = idx + n_train;

    /* standardise with the train set only: the test set stays unseen */
    Model m = {.cols = d.cols, .b = 0};
    for (int c = 0; c < d.cols; c++) {
        double s = 0, ss = 0;
        for (int i = 0; i < n_train; i++) s += d.x[(size_t)train[i] * d.cols + c];
        double mean = s / n_train;
        for (int i = 0; i < n_train; i++) {
            double v = d.x[(size_t)train[i] * d.cols + c] - mean;
            ss += v * v;
        }
        double sd = sqrt(ss / n_train);
        m.mean[c] = mean;
        m.std[c] = sd > 0 ? sd : 1;
        /* small seeded initial weights, so the seed matters beyond the split */
        m.w[c] = ((double)(rng_next() >> 11) / 9007199254740992.0 - 0.5) * 0.02;
    }

    double *loss = malloc((size_t)epochs * sizeof *loss);
    double *test_loss = malloc((size_t)epochs * sizeof *test_loss);
    if (!loss || !test_loss) die(12, "out of memory", NULL);
    int *order = malloc((size_t)n_train * sizeof *order);
    if (!order) die(12, "out of memory", NULL);
    memcpy(order, train, (size_t)n_train * sizeof *order);

    int correct;
    for (long e = 0; e < epochs; e++) {
        shuffle(order, n_train);
        double rate = lr / (1.0 + 0.01 * (double)e); /* gentle decay */
        for (int i = 0; i < n_train; i++) {
            const double *row = d.x + (size_t)order[i] * d.cols;
            double g = sigmoid(logit(&m, row)) - d.y[order[i]];
            for (int c = 0; c < d.cols; c++) {
                double xc = (row[c] - m.mean[c]) / m.std[c];
                m.w[c] -= rate * (g * xc + L2 * m.w[c]);
            }
            m.b -= rate * g;
        }
        loss[e] = evaluate(&m, &d, train, n_train, &correct);
        test_loss[e] = evaluate(&m, &d, test, n_test, &correct);
    }
    int train_ok, test_ok;
    double final_train_loss = evaluate(&m, &d, train, n_train, &train_ok);
    double final_test_loss = evaluate(&m, &d, test, n_test, &test_ok);
    double train_acc = (double)train_ok / n_train, test_acc = (double)test_ok / n_test;

    FILE *f = fopen("/out/model.json", "w");
    if (!f) die(2, "cannot create /out/model.json", strerror(errno));
    fprintf(f, "{\n  \"type\": \"logistic_regression\",\n  \"features\": [");
    for (int c = 0; c < d.cols; c++) fprintf(f, "%s\"%s\"", c ? ", " : "", d.names[c]);
    fprintf(f, "],\n  \"label\": \"%s\",\n  \"weights\": ", d.names[d.cols]);
    print_array(f, m.w, d.cols);
    fprintf(f, ",\n  \"bias\": %.17g,\n  \"mean\": ", m.b);
    print_array(f, m.mean, d.cols);
    fprintf(f, ",\n  \"std\": ");
    print_array(f, m.std, d.cols);
    fprintf(f, ",\n  \"predict\": \"passed = 1 if bias + sum(weights[i] * (x[i] - mean[i]) / std[i]) >= 0\"\n}\n");
    if (fclose(f)) die(2, "cannot write /out/model.json", strerror(errno));

    f = fopen("/out/metrics.json", "w");
    if (!f) die(2, "cannot create /out/metrics.json", strerror(errno));
    fprintf(f,
            "{\n  \"epochs\": %ld,\n  \"learning_rate\": %.10g,\n  \"seed\": %llu,\n"
            "  \"rows\": %d,\n  \"n_train\": %d,\n  \"n_test\": %d,\n"
            "  \"train_correct\": %d,\n  \"test_correct\": %d,\n"
            "  \"train_accuracy\": %.6f,\n  \"test_accuracy\": %.6f,\n"
            "  \"train_loss\": %.6f,\n  \"test_loss\": %.6f,\n  \"loss_per_epoch\": [",
            epochs, lr, seed, d.rows, n_train, n_test, train_ok, test_ok, train_acc, test_acc,
            final_train_loss, final_test_loss);
    for (long e = 0; e < epochs; e++) fprintf(f, "%s%.6f", e ? ", " : "", loss[e]);
    fprintf(f, "],\n  \"test_loss_per_epoch\": [");
    for (long e = 0; e < epochs; e++) fprintf(f, "%s%.6f", e ? ", " : "", test_loss[e]);
    fprintf(f, "]\n}\n");
    if (fclose(f)) die(2, "cannot write /out/metrics.json", strerror(errno));

    printf("logistic regression: %d features, %d train / %d test rows, %ld epochs, lr %g, seed %llu\n",
           d.cols, n_train, n_test, epochs, lr, seed);
    printf("epoch 1 loss %.4f -> epoch %ld loss %.4f\n", loss[0], epochs, loss[epochs - 1]);
    printf("train accuracy %.4f (%d/%d)\n", train_acc, train_ok, n_train);
    printf("test accuracy %.4f (%d/%d)\n", test_acc, test_ok, n_test);
    return 0;
}
