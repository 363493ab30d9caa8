/* render: one tile of a ray-traced image, as a maskd job.
 *
 *   render WIDTH HEIGHT TILE_X TILE_Y TILE_W TILE_H
 *
 * Renders the TILE_W x TILE_H pixels at (TILE_X, TILE_Y) of a WIDTH x HEIGHT
 * image and writes them to /out/tile.ppm (binary PPM, P6). The scene: four
 * spheres (one a mirror) on a checkered plane under a sky, lit by two point
 * lights, with Lambert diffuse and Blinn-Phong specular shading, hard shadows,
 * reflections and 2x2 supersampling. No randomness: a pixel's colour depends
 * only on its position and the image size, so tiles rendered anywhere fit
 * together seamlessly (examples/render/compose.py joins them into a PNG).
 *
 * Build: make (clang --target=wasm32-wasi). Run: mask submit job.toml
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SIDE 16384
#define MAX_DEPTH 3
#define EPS 1e-4

typedef struct { double x, y, z; } Vec;

static Vec v(double x, double y, double z) { Vec r = {x, y, z}; return r; }
static Vec add(Vec a, Vec b) { return v(a.x + b.x, a.y + b.y, a.z + b.z); }
static Vec sub(Vec a, Vec b) { return v(a.x - b.x, a.y - b.y, a.z - b.z); }
static Vec mul(Vec a, double s) { return v(a.x * s, a.y * s, a.z * s); }
static Vec hadamard(Vec a, Vec b) { return v(a.x * b.x, a.y * b.y, a.z * b.z); }
static double dot(Vec a, Vec b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
static Vec cross(Vec a, Vec b) {
    return v(a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x);
}
static Vec norm(Vec a) { return mul(a, 1.0 / sqrt(dot(a, a))); }

typedef struct {
    Vec diffuse;
    double specular, shininess, reflect;
} Material;

typedef struct {
    Vec center;
    double radius;
    Material m;
} Sphere;

typedef struct {
    Vec pos, color;
} Light;

static const Sphere spheres[] = {
    {{0.0, 1.0, 0.0}, 1.0, {{0.05, 0.05, 0.05}, 0.9, 200, 0.8}}, /* mirror */
    {{-2.2, 0.7, 0.8}, 0.7, {{0.85, 0.20, 0.15}, 0.5, 60, 0.0}},
    {{2.0, 0.6, -0.4}, 0.6, {{0.20, 0.45, 0.85}, 0.6, 80, 0.1}},
    {{0.9, 0.35, -1.7}, 0.35, {{0.95, 0.80, 0.20}, 0.4, 30, 0.0}},
};
#define NSPHERES ((int)(sizeof spheres / sizeof spheres[0]))

static const Light lights[] = {
    {{-4.0, 6.0, -3.0}, {0.85, 0.80, 0.75}},
    {{5.0, 4.0, -2.0}, {0.35, 0.40, 0.55}},
};
#define NLIGHTS ((int)(sizeof lights / sizeof lights[0]))

static const Vec ambient = {0.08, 0.08, 0.10};

/* nearest hit along origin + t*dir for t > EPS: returns t, or INFINITY.
 * *what: the sphere index, or -1 for the plane y = 0. */
static double intersect(Vec origin, Vec dir, int *what) {
    double best = INFINITY;
    *what = -2;
    for (int i = 0; i < NSPHERES; i++) {
        Vec oc = sub(origin, spheres[i].center);
        double b = dot(oc, dir);
        double c = dot(oc, oc) - spheres[i].radius * spheres[i].radius;
        double disc = b * b - c;
        if (disc < 0) continue;
        double s = sqrt(disc);
        double t = -b - s;
        if (t <= EPS) t = -b + s;
        if (t > EPS && t < best) { best = t; *what = i; }
    }
    if (dir.y < -1e-9) {
        double t = -origin.y / dir.y;
        if (t > EPS && t < best) { best = t; *what = -1; }
    }
    return best;
}

static Vec sky(Vec dir) {
    double t = 0.5 * (dir.y + 1.0);
    return add(mul(v(0.95, 0.95, 1.0), 1.0 - t), mul(v(0.35, 0.55, 0.90), t));
}

static Vec trace(Vec origin, Vec dir, int depth) {
    int what;
    double t = intersect(origin, dir, &what);
    if (what == -2) return sky(dir);
    Vec p = add(origin, mul(dir, t));
    Vec n;
    Material m;
    if (what >= 0) {
        n = norm(sub(p, spheres[what].center));
        m = spheres[what].m;
    } else {
        n = v(0, 1, 0);
        /* a checkerboard that fades with distance, so it does not alias */
        /* in doubles: far hits at grazing angles overflow an int */
        int check = fabs(fmod(floor(p.x) + floor(p.z), 2.0)) > 0.5;
        Vec c = check ? v(0.80, 0.80, 0.78) : v(0.25, 0.25, 0.28);
        double fade = exp(-0.02 * t);
        Material plane = {add(mul(c, fade), mul(v(0.5, 0.5, 0.5), 1.0 - fade)), 0.2, 20, 0.15};
        m = plane;
    }
    Vec color = hadamard(ambient, m.diffuse);
    Vec to_eye = mul(dir, -1.0);
    for (int i = 0; i < NLIGHTS; i++) {
        Vec to_light = sub(lights[i].pos, p);
        double dist = sqrt(dot(to_light, to_light));
        Vec l = mul(to_light, 1.0 / dist);
        double ndl = dot(n, l);
        if (ndl <= 0) continue;
        int blocker;
        double ts = intersect(add(p, mul(n, EPS * 10)), l, &blocker);
        if (blocker != -2 && ts < dist) continue; /* in shadow */
        Vec h = norm(add(l, to_eye));
        double spec = pow(fmax(dot(n, h), 0.0), m.shininess) * m.specular;
        color = add(color, hadamard(lights[i].color, add(mul(m.diffuse, ndl), v(spec, spec, spec))));
    }
    if (m.reflect > 0 && depth < MAX_DEPTH) {
        Vec r = sub(dir, mul(n, 2 * dot(dir, n)));
        Vec rc = trace(add(p, mul(n, EPS * 10)), norm(r), depth + 1);
        color = add(mul(color, 1.0 - m.reflect), mul(rc, m.reflect));
    }
    return color;
}

static unsigned char to_byte(double c) {
    if (c <= 0) return 0;
    if (c >= 1) return 255;
    return (unsigned char)(pow(c, 1.0 / 2.2) * 255.0 + 0.5); /* gamma 2.2 */
}

static long arg(const char *name, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long n = strtol(s, &end, 10);
    if (!*s || *end || errno || n < lo || n > hi) {
        fprintf(stderr, "render: %s must be an integer in [%ld, %ld], got '%s'\n", name, lo, hi, s);
        exit(64);
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: render WIDTH HEIGHT TILE_X TILE_Y TILE_W TILE_H\n");
        return 64;
    }
    long width = arg("WIDTH", argv[1], 1, MAX_SIDE);
    long height = arg("HEIGHT", argv[2], 1, MAX_SIDE);
    long tx = arg("TILE_X", argv[3], 0, width - 1);
    long ty = arg("TILE_Y", argv[4], 0, height - 1);
    long tw = arg("TILE_W", argv[5], 1, width - tx);
    long th = arg("TILE_H", argv[6], 1, height - ty);

    /* camera: at eye, looking at target, 50 degree vertical field of view */
    Vec eye = v(0.0, 1.6, -5.5), target = v(0.0, 0.8, 0.0);
    Vec forward = norm(sub(target, eye));
    Vec right = norm(cross(v(0, 1, 0), forward));
    Vec up = cross(forward, right);
    double half_h = tan(50.0 * 3.14159265358979323846 / 360.0);
    double half_w = half_h * (double)width / (double)height;

    FILE *out = fopen("/out/tile.ppm", "wb");
    if (!out) {
        fprintf(stderr, "render: cannot create /out/tile.ppm: %s\n", strerror(errno));
        return 2;
    }
    fprintf(out, "P6\n%ld %ld\n255\n", tw, th);
    unsigned char *row = malloc((size_t)tw * 3);
    if (!row) {
        fprintf(stderr, "render: out of memory\n");
        return 12;
    }
    static const double sub_px[2] = {0.25, 0.75};
    for (long y = ty; y < ty + th; y++) {
        for (long x = tx; x < tx + tw; x++) {
            Vec c = v(0, 0, 0);
            for (int sy = 0; sy < 2; sy++)
                for (int sx = 0; sx < 2; sx++) {
                    double u = (2.0 * ((double)x + sub_px[sx]) / (double)width - 1.0) * half_w;
                    double w = (1.0 - 2.0 * ((double)y + sub_px[sy]) / (double)height) * half_h;
                    Vec dir = norm(add(forward, add(mul(right, u), mul(up, w))));
                    c = add(c, trace(eye, dir, 0));
                }
            c = mul(c, 0.25);
            unsigned char *px = row + (x - tx) * 3;
            px[0] = to_byte(c.x);
            px[1] = to_byte(c.y);
            px[2] = to_byte(c.z);
        }
        fwrite(row, 3, (size_t)tw, out);
    }
    free(row);
    if (fclose(out) != 0) {
        fprintf(stderr, "render: cannot write /out/tile.ppm: %s\n", strerror(errno));
        return 2;
    }
    printf("rendered tile %ldx%ld at (%ld,%ld) of a %ldx%ld image to /out/tile.ppm\n", tw, th, tx,
           ty, width, height);
    return 0;
}
