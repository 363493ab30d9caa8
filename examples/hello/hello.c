/* hello: the smallest useful maskd job.
 *
 * Prints a greeting and its arguments, reads every file under /in (the
 * job's read-only inputs) and writes /out/result.txt with one line per file:
 * its path under /in, its size and an FNV-1a checksum. With an integer
 * argument N it also writes the sum of the first N squares, so a test can
 * check the program really computed something.
 *
 * Build: make (clang --target=wasm32-wasi). Run: mask submit job.toml
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int scan(const char *dir, FILE *out);

static int checksum_file(const char *path, FILE *out) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
        return 1;
    }
    uint32_t hash = 2166136261u; /* FNV-1a, 32 bit */
    uint64_t size = 0;
    unsigned char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        for (size_t i = 0; i < n; i++) {
            hash ^= buf[i];
            hash *= 16777619u;
        }
        size += n;
    }
    fclose(f);
    /* strip the "/in/" prefix so the output does not depend on the mount */
    fprintf(out, "%s %" PRIu64 " fnv1a32:%08" PRIx32 "\n", path + 4, size, hash);
    return 0;
}

static int scan(const char *dir, FILE *out) {
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "cannot list %s: %s\n", dir, strerror(errno));
        return 1;
    }
    /* readdir order is the host filesystem's; sort for a reproducible result */
    char **names = NULL;
    size_t count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char **grown = realloc(names, (count + 1) * sizeof *names);
        if (!grown || !(grown[count] = strdup(e->d_name))) {
            fprintf(stderr, "out of memory\n");
            exit(12);
        }
        names = grown;
        count++;
    }
    closedir(d);
    for (size_t i = 1; i < count; i++)
        for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char *t = names[j]; names[j] = names[j - 1]; names[j - 1] = t;
        }
    int failed = 0;
    for (size_t i = 0; i < count; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
            failed |= scan(path, out);
        else
            failed |= checksum_file(path, out);
        free(names[i]);
    }
    free(names);
    return failed;
}

int main(int argc, char **argv) {
    printf("hello from maskd\n");
    for (int i = 1; i < argc; i++) printf("arg %d: %s\n", i, argv[i]);

    FILE *out = fopen("/out/result.txt", "w");
    if (!out) {
        fprintf(stderr, "cannot create /out/result.txt: %s\n", strerror(errno));
        return 2;
    }
    int failed = 0;
    struct stat st;
    if (stat("/in", &st) == 0) failed |= scan("/in", out);
    if (argc > 1) {
        char *end;
        long long n = strtoll(argv[1], &end, 10);
        if (*end == '\0' && n >= 0 && n <= 2000000) {
            /* sum of the first N squares: N(N+1)(2N+1)/6, computed the slow way */
            uint64_t sum = 0;
            for (long long k = 1; k <= n; k++) sum += (uint64_t)(k * k);
            fprintf(out, "sum_of_squares(%lld) = %" PRIu64 "\n", n, sum);
            printf("sum of the first %lld squares: %" PRIu64 "\n", n, sum);
        }
    }
    if (fclose(out) != 0) failed = 1;
    return failed ? 1 : 0;
}
