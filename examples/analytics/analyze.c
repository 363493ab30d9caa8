/* analytics: aggregations over a sales CSV, as a maskd job.
 *
 *   analyze [TOP_N] [CSV]
 *
 * Reads CSV (default /in/data/sales.csv; header `date,region,product,units,
 * price`, dates YYYY-MM-DD, prices with at most two decimals) and computes:
 * totals; per-region orders, units and revenue with each region's top
 * products; the top TOP_N products (default 3) by revenue; revenue per month;
 * and the mean, median, population standard deviation, min and max of the
 * order value (units * price). Money is summed in integer cents, so totals are
 * exact. Writes /out/report.json and /out/report.csv and prints a summary.
 *
 * Build: make (clang --target=wasm32-wasi). Run: mask submit job.toml
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINE 1024
#define MAX_KEY 48

typedef struct {
    char key[MAX_KEY];
    long long orders, units, cents;
} Group;

typedef struct {
    Group *g;
    int n, cap;
} Table;

static const char *source;
static int lineno;

static void die(int code, const char *msg) {
    if (lineno)
        fprintf(stderr, "analyze: %s:%d: %s\n", source, lineno, msg);
    else
        fprintf(stderr, "analyze: %s\n", msg);
    exit(code);
}

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n);
    if (!p) die(12, "out of memory");
    return p;
}

/* find or add: the tables are small (tens of keys), so a linear scan is enough */
static Group *lookup(Table *t, const char *key) {
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->g[i].key, key)) return &t->g[i];
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 16;
        t->g = xrealloc(t->g, (size_t)t->cap * sizeof *t->g);
    }
    Group *g = &t->g[t->n++];
    memset(g, 0, sizeof *g);
    snprintf(g->key, sizeof g->key, "%s", key);
    return g;
}

static void count(Table *t, const char *key, long long units, long long cents) {
    Group *g = lookup(t, key);
    g->orders++;
    g->units += units;
    g->cents += cents;
}

static int by_revenue(const void *a, const void *b) {
    const Group *x = a, *y = b;
    if (x->cents != y->cents) return x->cents > y->cents ? -1 : 1;
    return strcmp(x->key, y->key);
}
static int by_key(const void *a, const void *b) {
    return strcmp(((const Group *)a)->key, ((const Group *)b)->key);
}
static int by_value(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* "12.5" or "12.50" or "12" -> 1250 cents; anything else is an error */
static int parse_cents(const char *s, long long *out) {
    long long whole = 0;
    const char *p = s;
    if (*p < '0' || *p > '9') return 0;
    while (*p >= '0' && *p <= '9') {
        whole = whole * 10 + (*p++ - '0');
        if (whole > 1000000000000LL) return 0;
    }
    long long frac = 0;
    if (*p == '.') {
        p++;
        int digits = 0;
        while (*p >= '0' && *p <= '9' && digits < 2) frac = frac * 10 + (*p++ - '0'), digits++;
        if (digits == 0) return 0;
        if (digits == 1) frac *= 10;
    }
    if (*p) return 0;
    *out = whole * 100 + frac;
    return 1;
}

static int valid_date(const char *s) {
    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-') return 0;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9')) return 0;
    int month = (s[5] - '0') * 10 + (s[6] - '0'), day = (s[8] - '0') * 10 + (s[9] - '0');
    return month >= 1 && month <= 12 && day >= 1 && day <= 31;
}

/* money as a JSON/CSV number with exactly two decimals */
static void money(FILE *f, long long cents) {
    if (cents < 0) fputc('-', f), cents = -cents;
    fprintf(f, "%lld.%02lld", cents / 100, cents % 100);
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

/* {"<name>": key, "orders": .., "units": .., "revenue": .. -- the caller closes it */
static void json_open_group(FILE *f, const char *name, const Group *g) {
    fprintf(f, "{\"%s\": ", name);
    json_str(f, g->key);
    fprintf(f, ", \"orders\": %lld, \"units\": %lld, \"revenue\": ", g->orders, g->units);
    money(f, g->cents);
}

static void json_group(FILE *f, const char *name, const Group *g) {
    json_open_group(f, name, g);
    fputc('}', f);
}

static void csv_group(FILE *f, const char *section, const Group *g) {
    fprintf(f, "%s,%s,%lld,%lld,", section, g->key, g->orders, g->units);
    money(f, g->cents);
    fputc('\n', f);
}

int main(int argc, char **argv) {
    if (argc > 3) {
        fprintf(stderr, "usage: analyze [TOP_N] [CSV]\n");
        return 64;
    }
    int top_n = 3;
    if (argc > 1) {
        char *end;
        long n = strtol(argv[1], &end, 10);
        if (!argv[1][0] || *end || n < 1 || n > 1000) {
            fprintf(stderr, "analyze: TOP_N must be an integer in [1, 1000], got '%s'\n", argv[1]);
            return 64;
        }
        top_n = (int)n;
    }
    source = argc > 2 ? argv[2] : "/in/data/sales.csv";

    FILE *in = fopen(source, "r");
    if (!in) {
        fprintf(stderr, "analyze: cannot open %s: %s\n", source, strerror(errno));
        return 2;
    }
    char line[MAX_LINE];
    lineno = 1;
    if (!fgets(line, sizeof line, in)) die(2, "empty file");
    line[strcspn(line, "\r\n")] = '\0';
    if (strcmp(line, "date,region,product,units,price") != 0)
        die(2, "expected the header date,region,product,units,price");

    Table regions = {0}, products = {0}, months = {0}, cross = {0};
    long long *values = NULL;
    size_t rows = 0, values_cap = 0;
    long long total_units = 0, total_cents = 0;
    while (fgets(line, sizeof line, in)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(in)) die(2, "line too long");
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0]) continue;
        char *field[5];
        int nf = 0;
        for (char *p = line;; p++) {
            if (nf == 5) die(2, "more than 5 columns");
            field[nf++] = p;
            p = strchr(p, ',');
            if (!p) break;
            *p = '\0';
        }
        if (nf != 5) die(2, "expected 5 columns");
        if (!valid_date(field[0])) die(2, "date must be YYYY-MM-DD");
        for (int i = 1; i <= 2; i++)
            if (!field[i][0] || strlen(field[i]) >= MAX_KEY / 2 || strchr(field[i], '"'))
                die(2, "region and product must be 1-23 characters without quotes");
        char *end;
        errno = 0;
        long long units = strtoll(field[3], &end, 10);
        if (!field[3][0] || *end || errno || units < 0 || units > 1000000000)
            die(2, "units must be a whole number in [0, 10^9]");
        long long price;
        if (!parse_cents(field[4], &price)) die(2, "price must look like 12.34");
        long long cents = units * price;

        char month[8], pair[MAX_KEY];
        memcpy(month, field[0], 7);
        month[7] = '\0';
        snprintf(pair, sizeof pair, "%s\t%s", field[1], field[2]);
        count(&regions, field[1], units, cents);
        count(&products, field[2], units, cents);
        count(&months, month, units, cents);
        count(&cross, pair, units, cents);
        if (rows == values_cap) {
            values_cap = values_cap ? values_cap * 2 : 4096;
            values = xrealloc(values, values_cap * sizeof *values);
        }
        values[rows++] = cents;
        total_units += units;
        total_cents += cents;
    }
    if (ferror(in)) die(2, "read error");
    fclose(in);
    lineno = 0;
    if (rows == 0) die(2, "no data rows");

    qsort(regions.g, (size_t)regions.n, sizeof *regions.g, by_revenue);
    qsort(products.g, (size_t)products.n, sizeof *products.g, by_revenue);
    qsort(months.g, (size_t)months.n, sizeof *months.g, by_key);
    qsort(cross.g, (size_t)cross.n, sizeof *cross.g, by_revenue);
    qsort(values, rows, sizeof *values, by_value);

    double mean_cents = (double)total_cents / (double)rows;
    double ss = 0;
    for (size_t i = 0; i < rows; i++) {
        double d = (double)values[i] - mean_cents;
        ss += d * d;
    }
    double stddev = sqrt(ss / (double)rows) / 100.0;
    /* the median in half-cents, so it prints exactly */
    long long median2 = rows % 2 ? 2 * values[rows / 2] : values[rows / 2 - 1] + values[rows / 2];

    FILE *f = fopen("/out/report.json", "w");
    if (!f) die(2, "cannot create /out/report.json");
    fprintf(f, "{\n  \"source\": ");
    json_str(f, source);
    fprintf(f, ",\n  \"rows\": %zu,\n  \"top_n\": %d,\n", rows, top_n);
    fprintf(f, "  \"total\": {\"orders\": %zu, \"units\": %lld, \"revenue\": ", rows, total_units);
    money(f, total_cents);
    fprintf(f, "},\n  \"order_value\": {\"mean\": %.4f, \"median\": ", mean_cents / 100.0);
    money(f, median2 / 2);
    if (median2 % 2) fputc('5', f);
    fprintf(f, ", \"stddev\": %.4f, \"min\": ", stddev);
    money(f, values[0]);
    fprintf(f, ", \"max\": ");
    money(f, values[rows - 1]);
    fprintf(f, "},\n  \"regions\": [");
    for (int i = 0; i < regions.n; i++) {
        const Group *r = &regions.g[i];
        fprintf(f, "%s\n    ", i ? "," : "");
        json_open_group(f, "region", r);
        fprintf(f, ", \"share\": %.4f, \"top_products\": [", (double)r->cents / (double)total_cents);
        size_t len = strlen(r->key);
        int shown = 0;
        for (int j = 0; j < cross.n && shown < top_n; j++) {
            const Group *c = &cross.g[j];
            if (strncmp(c->key, r->key, len) || c->key[len] != '\t') continue;
            Group named = *c;
            memmove(named.key, c->key + len + 1, strlen(c->key + len + 1) + 1);
            fprintf(f, "%s", shown++ ? ", " : "");
            json_group(f, "product", &named);
        }
        fprintf(f, "]}");
    }
    fprintf(f, "\n  ],\n  \"top_products\": [");
    for (int i = 0; i < products.n && i < top_n; i++) {
        fprintf(f, "%s\n    ", i ? "," : "");
        json_group(f, "product", &products.g[i]);
    }
    fprintf(f, "\n  ],\n  \"months\": [");
    for (int i = 0; i < months.n; i++) {
        fprintf(f, "%s\n    ", i ? "," : "");
        json_group(f, "month", &months.g[i]);
    }
    fprintf(f, "\n  ]\n}\n");
    if (fclose(f)) die(2, "cannot write /out/report.json");

    f = fopen("/out/report.csv", "w");
    if (!f) die(2, "cannot create /out/report.csv");
    fprintf(f, "section,key,orders,units,revenue\ntotal,all,%zu,%lld,", rows, total_units);
    money(f, total_cents);
    fputc('\n', f);
    for (int i = 0; i < regions.n; i++) csv_group(f, "region", &regions.g[i]);
    for (int i = 0; i < products.n; i++) csv_group(f, "product", &products.g[i]);
    for (int i = 0; i < months.n; i++) csv_group(f, "month", &months.g[i]);
    if (fclose(f)) die(2, "cannot write /out/report.csv");

    const Group *best_month = &months.g[0];
    for (int i = 1; i < months.n; i++)
        if (months.g[i].cents > best_month->cents) best_month = &months.g[i];
    printf("%zu order lines, %lld units, revenue ", rows, total_units);
    money(stdout, total_cents);
    printf("\ntop region: %s (", regions.g[0].key);
    money(stdout, regions.g[0].cents);
    printf(")\ntop product: %s (", products.g[0].key);
    money(stdout, products.g[0].cents);
    printf(")\nbest month: %s (", best_month->key);
    money(stdout, best_month->cents);
    printf(")\norder value: mean %.2f, median ", mean_cents / 100.0);
    money(stdout, median2 / 2);
    if (median2 % 2) putchar('5');
    printf(", stddev %.2f\n", stddev);
    free(values);
    return 0;
}
