// The C floor for a migration (issue 23): what any tool must at least do to move N entries from an
// old map into a new one of another layout, with libbpf's batch API and nothing else.
//
// Creates a hash map of the old sizes holding N entries (untimed), then times: one
// bpf_map_lookup_batch of the whole old map (read), and one bpf_map_update_batch of N entries of
// the new sizes into an empty new map (write; the entries are the old ones with their bytes
// copied into the new layout's first bytes: no field-by-field work, so the floor is the kernel's).
//
// Build: cc -O2 -o bench/bin/migrate_floor bench/c/migrate_floor.c -lbpf
// Usage: migrate_floor N OLD_KEY OLD_VALUE NEW_KEY NEW_VALUE   (prints: read_s write_s)

#include <bpf/bpf.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void die(const char *what, int err)
{
	fprintf(stderr, "migrate_floor: %s: %s\n", what, strerror(err));
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int create(uint32_t key, uint32_t value, uint32_t n)
{
	LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = BPF_F_NO_PREALLOC);
	int fd = bpf_map_create(BPF_MAP_TYPE_HASH, "floor", key, value, n, &opts);

	if (fd < 0)
		die("bpf_map_create", errno);
	return fd;
}

static void write_all(int fd, const void *keys, const void *values, uint32_t n)
{
	uint32_t count = n;

	if (bpf_map_update_batch(fd, keys, values, &count, NULL) || count != n)
		die("bpf_map_update_batch", errno);
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: migrate_floor N OLD_KEY OLD_VALUE NEW_KEY NEW_VALUE\n");
		return 2;
	}
	uint32_t n = atoi(argv[1]), ok = atoi(argv[2]), ov = atoi(argv[3]), nk = atoi(argv[4]), nv = atoi(argv[5]);
	uint8_t *keys = calloc(n, ok), *values = calloc(n, ov), *rk = calloc(n, ok), *rv = calloc(n, ov);
	uint8_t *new_keys = calloc(n, nk), *new_values = calloc(n, nv);

	if (!keys || !values || !rk || !rv || !new_keys || !new_values)
		die("calloc", ENOMEM);
	for (uint32_t i = 0; i < n; i++) {  /* distinct keys: i in the first 4 bytes */
		memcpy(keys + (size_t)i * ok, &i, 4);
		memcpy(values + (size_t)i * ov, &i, 4);
	}
	int old = create(ok, ov, n);
	write_all(old, keys, values, n);

	double t0 = now();
	uint32_t batch, total = 0, count;
	int err = 0;
	while (total < n) {
		count = n - total;
		err = bpf_map_lookup_batch(old, total ? &batch : NULL, &batch, rk + (size_t)total * ok,
					   rv + (size_t)total * ov, &count, NULL);
		total += count;
		if (err) {
			if (errno == ENOENT)
				break;
			die("bpf_map_lookup_batch", errno);
		}
	}
	double t1 = now();
	if (total != n)
		die("bpf_map_lookup_batch: short read", EIO);
	for (uint32_t i = 0; i < n; i++) {  /* the old bytes at the start of each new record */
		memcpy(new_keys + (size_t)i * nk, rk + (size_t)i * ok, ok < nk ? ok : nk);
		memcpy(new_values + (size_t)i * nv, rv + (size_t)i * ov, ov < nv ? ov : nv);
	}
	int new = create(nk, nv, n);
	double t2 = now();
	write_all(new, new_keys, new_values, n);
	double t3 = now();
	printf("%.6f %.6f\n", t1 - t0, t3 - t2);
	return 0;
}
