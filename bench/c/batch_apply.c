// The physical limit for the benchmark (issue 6): load a workload with libbpf's batch API.
//
// Reads the binary input written by bench/workloads.py (write_binary), creates every
// inner map, fills each with one bpf_map_update_batch, pins it at <pin root>/<name>,
// then creates the outer map (template: the first inner map), puts every inner map in
// its slot with one batch (one RCU grace period, not one per slot) and pins it.
//
// Build: cc -O2 -o bench/bin/batch_apply bench/c/batch_apply.c -lbpf
// Usage: batch_apply INPUT.bin PIN_ROOT

#include <bpf/bpf.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

struct cursor {
	const uint8_t *p, *end;
};

static void die(const char *what, int err)
{
	fprintf(stderr, "batch_apply: %s: %s\n", what, strerror(err));
	exit(1);
}

static const void *take(struct cursor *c, size_t n)
{
	const void *p = c->p;

	if ((size_t)(c->end - c->p) < n)
		die("truncated input", EINVAL);
	c->p += n;
	return p;
}

static uint32_t u32(struct cursor *c)
{
	uint32_t v;

	memcpy(&v, take(c, 4), 4);
	return v;
}

static void pin(int fd, const char *root, const char *name)
{
	char path[4096];

	snprintf(path, sizeof(path), "%s/%.16s", root, name);
	if (bpf_obj_pin(fd, path))
		die(path, errno);
}

static void update_batch(int fd, const void *keys, const void *values, uint32_t count, const char *name)
{
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	uint32_t n = count;

	if (count && bpf_map_update_batch(fd, keys, values, &n, &opts))
		die(name, errno);
}

int main(int argc, char **argv)
{
	struct cursor c;
	struct stat st;
	uint32_t n_inner, i;
	int *fds, in;
	char name[17] = {0};

	if (argc != 3) {
		fprintf(stderr, "usage: %s INPUT.bin PIN_ROOT\n", argv[0]);
		return 2;
	}
	in = open(argv[1], O_RDONLY);
	if (in < 0 || fstat(in, &st))
		die(argv[1], errno);
	c.p = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, in, 0);
	if (c.p == MAP_FAILED)
		die("mmap", errno);
	c.end = c.p + st.st_size;
	if (memcmp(take(&c, 4), "KMB1", 4))
		die("not a workload file", EINVAL);

	n_inner = u32(&c);
	fds = calloc(n_inner ? n_inner : 1, sizeof(*fds));
	for (i = 0; i < n_inner; i++) {
		uint32_t type, ks, vs, max, count;
		const void *keys, *values;

		memcpy(name, take(&c, 16), 16);
		type = u32(&c), ks = u32(&c), vs = u32(&c), max = u32(&c), count = u32(&c);
		keys = take(&c, (size_t)count * ks);
		values = take(&c, (size_t)count * vs);
		fds[i] = bpf_map_create(type, name, ks, vs, max, NULL);
		if (fds[i] < 0)
			die(name, errno);
		update_batch(fds[i], keys, values, count, name);
		pin(fds[i], argv[2], name);
	}

	if (u32(&c)) {
		uint32_t type, ks, max, count, *values;
		const uint32_t *keys, *index;
		LIBBPF_OPTS(bpf_map_create_opts, copts);
		int outer;

		memcpy(name, take(&c, 16), 16);
		type = u32(&c), ks = u32(&c), max = u32(&c), count = u32(&c);
		keys = take(&c, (size_t)count * 4);
		index = take(&c, (size_t)count * 4);
		copts.inner_map_fd = fds[0];
		outer = bpf_map_create(type, name, ks, 4, max, &copts);
		if (outer < 0)
			die(name, errno);
		values = malloc((size_t)count * 4 + 4);
		for (i = 0; i < count; i++) {
			if (index[i] >= n_inner)
				die("slot refers to no inner map", EINVAL);
			values[i] = fds[index[i]];
		}
		update_batch(outer, keys, values, count, name);
		pin(outer, argv[2], name);
	}
	return 0;
}
