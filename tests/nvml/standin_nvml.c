/*
 * A stand-in for NVIDIA's libnvidia-ml.so, for hosts without GPUs: the agent loads it through
 * nvml-wrapper's library-path option (GANTRY_NVML_LIBRARY), so its real NVML code path runs
 * against a configurable set of GPUs.
 *
 * GANTRY_STANDIN_GPUS: GPUs separated by ';' (or newlines), each UUID|NAME|MEMORY_MIB[|FLAGS]
 * where FLAGS is a ','-separated list of: lost (memory queries fail with GPU_IS_LOST), mig (MIG
 * mode on), util=N (utilisation percent). GANTRY_STANDIN_GPUS_FILE names a file holding the
 * same, read instead when set. Read at every nvmlInit, so GPUs can fail or vanish between two
 * probes of a running agent. The driver is 550.54.15 with CUDA 12.4.
 *
 * Built by the test suite: cc -shared -fPIC -o libnvidia-ml-standin.so standin_nvml.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_GPU_IS_LOST = 15,
};

#define MAX_GPUS 16
struct gpu {
    char uuid[96];
    char name[96];
    unsigned long long memory;
    int lost, mig;
    unsigned util;
};

static struct gpu gpus[MAX_GPUS];
static unsigned gpu_count;
static int initialized;

static char *config(void) {
    const char *path = getenv("GANTRY_STANDIN_GPUS_FILE");
    if (path && *path) {
        FILE *f = fopen(path, "r");
        if (!f) return NULL;
        char *buf = calloc(1, 65536);
        size_t n = buf ? fread(buf, 1, 65535, f) : 0;
        (void)n;
        fclose(f);
        return buf;
    }
    const char *env = getenv("GANTRY_STANDIN_GPUS");
    return env ? strdup(env) : NULL;
}

static void parse(void) {
    gpu_count = 0;
    char *all = config(), *save = NULL;
    if (!all) return;
    for (char *g = strtok_r(all, ";\n", &save); g && gpu_count < MAX_GPUS; g = strtok_r(NULL, ";\n", &save)) {
        struct gpu *d = &gpus[gpu_count];
        memset(d, 0, sizeof *d);
        char *f[4] = {0};
        int n = 0;
        for (char *p = g; n < 4; n++) {
            f[n] = p;
            char *bar = strchr(p, '|');
            if (!bar) { n++; break; }
            *bar = 0;
            p = bar + 1;
        }
        if (n < 3) continue;
        snprintf(d->uuid, sizeof d->uuid, "%s", f[0]);
        snprintf(d->name, sizeof d->name, "%s", f[1]);
        d->memory = strtoull(f[2], NULL, 10) << 20;
        if (n > 3 && f[3]) {
            char *s2 = NULL;
            for (char *flag = strtok_r(f[3], ",", &s2); flag; flag = strtok_r(NULL, ",", &s2)) {
                if (!strcmp(flag, "lost")) d->lost = 1;
                else if (!strcmp(flag, "mig")) d->mig = 1;
                else if (!strncmp(flag, "util=", 5)) d->util = (unsigned)atoi(flag + 5);
            }
        }
        gpu_count++;
    }
    free(all);
}

static struct gpu *dev(void *h) {
    struct gpu *d = h;
    if (!initialized || d < gpus || d >= gpus + gpu_count) return NULL;
    return d;
}

static nvmlReturn_t copy(char *dst, unsigned len, const char *src) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(dst, src);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { parse(); initialized = 1; return NVML_SUCCESS; }
nvmlReturn_t nvmlInitWithFlags(unsigned flags) { (void)flags; return nvmlInit_v2(); }
nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }
nvmlReturn_t nvmlShutdown(void) { initialized = 0; return NVML_SUCCESS; }

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *v, unsigned len) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    return copy(v, len, "550.54.15");
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!v) return NVML_ERROR_INVALID_ARGUMENT;
    *v = 12040;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) { return nvmlSystemGetCudaDriverVersion_v2(v); }

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *n) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!n) return NVML_ERROR_INVALID_ARGUMENT;
    *n = gpu_count;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCount(unsigned *n) { return nvmlDeviceGetCount_v2(n); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned i, void **h) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!h || i >= gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    *h = &gpus[i];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned i, void **h) { return nvmlDeviceGetHandleByIndex_v2(i, h); }

nvmlReturn_t nvmlDeviceGetUUID(void *h, char *uuid, unsigned len) {
    struct gpu *d = dev(h);
    if (!d) return NVML_ERROR_INVALID_ARGUMENT;
    return copy(uuid, len, d->uuid);
}

nvmlReturn_t nvmlDeviceGetName(void *h, char *name, unsigned len) {
    struct gpu *d = dev(h);
    if (!d) return NVML_ERROR_INVALID_ARGUMENT;
    return copy(name, len, d->name);
}

struct mem1 { unsigned long long total, free, used; };
struct mem2 { unsigned version; unsigned long long total, reserved, free, used; };

nvmlReturn_t nvmlDeviceGetMemoryInfo(void *h, struct mem1 *m) {
    struct gpu *d = dev(h);
    if (!d || !m) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->lost) return NVML_ERROR_GPU_IS_LOST;
    m->total = d->memory;
    m->used = d->memory / 8;
    m->free = d->memory - m->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(void *h, struct mem2 *m) {
    struct gpu *d = dev(h);
    if (!d || !m) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->lost) return NVML_ERROR_GPU_IS_LOST;
    m->total = d->memory;
    m->reserved = 0;
    m->used = d->memory / 8;
    m->free = d->memory - m->used;
    return NVML_SUCCESS;
}

struct util { unsigned gpu, memory; };
nvmlReturn_t nvmlDeviceGetUtilizationRates(void *h, struct util *u) {
    struct gpu *d = dev(h);
    if (!d || !u) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->lost) return NVML_ERROR_GPU_IS_LOST;
    u->gpu = d->util;
    u->memory = d->util / 2;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(void *h, unsigned *current, unsigned *pending) {
    struct gpu *d = dev(h);
    if (!d || !current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    *current = *pending = (unsigned)d->mig;
    return NVML_SUCCESS;
}
