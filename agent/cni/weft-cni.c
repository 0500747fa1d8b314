/* weft-cni: Weft's chained CNI plugin (CNI spec 1.1). The container runtime runs it after the
 * main plugin has set up a pod's network; it asks the node's agent, over a unix socket, to enrol
 * the pod into the datapath before the pod's containers start, and fails the network setup when
 * that cannot be done, so no application of an ambient pod ever sends or receives a packet
 * unprotected (the kubelet retries a failed sandbox).
 *
 * Why C and not a script or Node: the runtime executes the plugin on the host, where neither Node
 * nor curl/jq can be assumed. This is one static binary with no dependencies; it only relays the
 * request (CNI_* variables and the network configuration from stdin) to the agent, which holds all
 * the logic (agent/src/cni.ts) and answers with exactly what to print. It decides on its own only
 * where the agent cannot be asked:
 *   VERSION                  the versions it speaks;
 *   excludeNamespaces        pods of these namespaces are passed through without asking (the
 *                            control plane's own pods must start before any agent has a config);
 *   agent unreachable        ADD and CHECK fail with code 11 (try again later); DEL succeeds
 *                            (the agent prunes enrolments of deleted pods when it comes back).
 *
 * Network configuration fields (besides cniVersion, name, type, prevResult):
 *   agentSocket        default /var/run/weft/cni.sock (env WEFT_CNI_SOCKET overrides both)
 *   excludeNamespaces  array of namespace names, default none
 *   timeoutSeconds     how long to wait for the agent's answer, default 30
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/var/run/weft/cni.sock"
#define MAX_CONFIG (1 << 20)
#define MAX_RESPONSE (1 << 20)
#define SUPPORTED_VERSIONS "[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]"

/* CNI error codes (spec section "Error"). */
enum { CNI_ERR_INCOMPATIBLE = 1, CNI_ERR_ENV = 4, CNI_ERR_IO = 5, CNI_ERR_DECODE = 6, CNI_ERR_CONFIG = 7, CNI_ERR_TRY_LATER = 11 };

static char cni_version[32] = "1.0.0";

/* ---- output --------------------------------------------------------------------------------- */

static void put_json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

/* Prints a CNI error result on stdout (where the runtime reads it) and exits non-zero. */
static void __attribute__((noreturn)) fail(int code, const char *msg, const char *details)
{
	printf("{\"cniVersion\":");
	put_json_string(stdout, cni_version);
	printf(",\"code\":%d,\"msg\":", code);
	put_json_string(stdout, msg);
	if (details) {
		printf(",\"details\":");
		put_json_string(stdout, details);
	}
	printf("}\n");
	fflush(stdout);
	exit(1);
}

/* ---- just enough JSON to read a few top-level fields ---------------------------------------- */

static const char *skip_ws(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

/* Past the string starting at p (on its opening quote); NULL if unterminated. */
static const char *skip_string(const char *p)
{
	for (p++; *p; p++) {
		if (*p == '\\') {
			if (!*++p)
				return NULL;
		} else if (*p == '"') {
			return p + 1;
		}
	}
	return NULL;
}

/* Past one JSON value starting at p; NULL when malformed. Depth-limited. */
static const char *skip_value(const char *p, int depth)
{
	p = skip_ws(p);
	if (depth > 64)
		return NULL;
	if (*p == '"')
		return skip_string(p);
	if (*p == '{' || *p == '[') {
		char close = *p == '{' ? '}' : ']';
		p = skip_ws(p + 1);
		if (*p == close)
			return p + 1;
		for (;;) {
			if (close == '}') {
				if (*p != '"' || !(p = skip_string(p)))
					return NULL;
				p = skip_ws(p);
				if (*p++ != ':')
					return NULL;
			}
			if (!(p = skip_value(p, depth + 1)))
				return NULL;
			p = skip_ws(p);
			if (*p == ',') {
				p = skip_ws(p + 1);
				continue;
			}
			return *p == close ? p + 1 : NULL;
		}
	}
	if (*p == '-' || (*p >= '0' && *p <= '9') || *p == 't' || *p == 'f' || *p == 'n') {
		const char *s = p;
		while (*p && strchr("+-.0123456789eEtruefalsn", *p))
			p++;
		return p > s ? p : NULL;
	}
	return NULL;
}

/* The raw value of a top-level member of the object `json`, as [*start, *end); 0 if absent. */
static int find_member(const char *json, const char *key, const char **start, const char **end)
{
	const char *p = skip_ws(json);
	size_t klen = strlen(key);
	if (*p++ != '{')
		return 0;
	p = skip_ws(p);
	while (*p == '"') {
		const char *name = p + 1;
		const char *after = skip_string(p);
		if (!after)
			return 0;
		int match = (size_t)(after - 1 - name) == klen && strncmp(name, key, klen) == 0;
		p = skip_ws(after);
		if (*p++ != ':')
			return 0;
		p = skip_ws(p);
		const char *vend = skip_value(p, 0);
		if (!vend)
			return 0;
		if (match) {
			*start = p;
			*end = vend;
			return 1;
		}
		p = skip_ws(vend);
		if (*p != ',')
			return 0;
		p = skip_ws(p + 1);
	}
	return 0;
}

/* A top-level string member without escapes, copied into out; 0 if absent, not such a string, or too long. */
static int string_member(const char *json, const char *key, char *out, size_t size)
{
	const char *s, *e;
	if (!find_member(json, key, &s, &e) || *s != '"' || e - s - 2 < 0 || (size_t)(e - s - 2) >= size)
		return 0;
	if (memchr(s + 1, '\\', (size_t)(e - s - 2)))
		return 0;
	memcpy(out, s + 1, (size_t)(e - s - 2));
	out[e - s - 2] = 0;
	return 1;
}

/* Is `name` one of the strings of the top-level array member `key`? */
static int in_string_array(const char *json, const char *key, const char *name)
{
	const char *p, *e;
	size_t n = strlen(name);
	if (!find_member(json, key, &p, &e) || *p != '[')
		return 0;
	for (p = skip_ws(p + 1); p < e && *p == '"';) {
		const char *after = skip_string(p);
		if (!after)
			return 0;
		if ((size_t)(after - p - 2) == n && strncmp(p + 1, name, n) == 0)
			return 1;
		p = skip_ws(after);
		if (*p == ',')
			p = skip_ws(p + 1);
	}
	return 0;
}

/* ---- CNI_ARGS ------------------------------------------------------------------------------- */

/* The value of KEY in CNI_ARGS ("K8S_POD_NAMESPACE=x;K8S_POD_NAME=y"), into out; 0 if absent. */
static int cni_arg(const char *args, const char *key, char *out, size_t size)
{
	size_t klen = strlen(key);
	for (const char *p = args; p && *p;) {
		const char *semi = strchr(p, ';');
		size_t len = semi ? (size_t)(semi - p) : strlen(p);
		if (len > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
			size_t vlen = len - klen - 1;
			if (vlen >= size)
				return 0;
			memcpy(out, p + klen + 1, vlen);
			out[vlen] = 0;
			return 1;
		}
		p = semi ? semi + 1 : NULL;
	}
	return 0;
}

/* ---- talking to the agent ------------------------------------------------------------------- */

static char *read_all(int fd, size_t max, size_t *len)
{
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap + 1);
	if (!buf)
		return NULL;
	for (;;) {
		if (n == cap) {
			if (cap >= max) {
				free(buf);
				errno = EFBIG;
				return NULL;
			}
			cap *= 2;
			char *nb = realloc(buf, cap + 1);
			if (!nb) {
				free(buf);
				return NULL;
			}
			buf = nb;
		}
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			free(buf);
			return NULL;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	buf[n] = 0;
	*len = n;
	return buf;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void put_env(FILE *f, const char *json_name, const char *env, int comma)
{
	const char *v = getenv(env);
	fprintf(f, "%s\"%s\":", comma ? "," : "", json_name);
	put_json_string(f, v ? v : "");
}

int main(void)
{
	const char *command = getenv("CNI_COMMAND");
	size_t config_len = 0;
	char *config;

	if (!command || !*command)
		fail(CNI_ERR_ENV, "CNI_COMMAND is not set", "weft-cni is a CNI plugin: the container runtime runs it");
	config = read_all(0, MAX_CONFIG, &config_len);
	if (!config)
		fail(CNI_ERR_IO, "cannot read the network configuration from stdin", strerror(errno));
	if (strcmp(command, "VERSION") == 0) {
		printf("{\"cniVersion\":\"1.1.0\",\"supportedVersions\":" SUPPORTED_VERSIONS "}\n");
		return 0;
	}
	const char *config_end = skip_value(config, 0);
	if (*skip_ws(config) != '{' || !config_end || *skip_ws(config_end))
		fail(CNI_ERR_DECODE, "the network configuration on stdin is not a JSON object", NULL);
	string_member(config, "cniVersion", cni_version, sizeof cni_version);
	if (strcmp(command, "ADD") && strcmp(command, "DEL") && strcmp(command, "CHECK") && strcmp(command, "STATUS") &&
	    strcmp(command, "GC"))
		fail(CNI_ERR_ENV, "CNI_COMMAND is not one of ADD, DEL, CHECK, STATUS, GC, VERSION", command);

	char ns[256] = "";
	cni_arg(getenv("CNI_ARGS"), "K8S_POD_NAMESPACE", ns, sizeof ns);
	if (ns[0] && in_string_array(config, "excludeNamespaces", ns) && strcmp(command, "STATUS") && strcmp(command, "GC")) {
		/* Not ours to judge: a chained plugin that changes nothing passes prevResult on. */
		const char *s, *e;
		if (strcmp(command, "ADD") == 0) {
			if (!find_member(config, "prevResult", &s, &e))
				fail(CNI_ERR_CONFIG, "weft-cni is a chained plugin: list it after the main plugin in a conflist (no prevResult)", NULL);
			fwrite(s, 1, (size_t)(e - s), stdout);
			fputc('\n', stdout);
		}
		return 0;
	}

	char path[sizeof(((struct sockaddr_un *)0)->sun_path)] = DEFAULT_SOCKET;
	char timeout_s[16] = "";
	const char *env_socket = getenv("WEFT_CNI_SOCKET");
	const char *vs, *ve;
	if (env_socket && *env_socket) {
		if (strlen(env_socket) >= sizeof path)
			fail(CNI_ERR_CONFIG, "WEFT_CNI_SOCKET is too long for a unix socket path", env_socket);
		strcpy(path, env_socket);
	} else if (find_member(config, "agentSocket", &vs, &ve) &&
		   !string_member(config, "agentSocket", path, sizeof path)) {
		fail(CNI_ERR_CONFIG, "agentSocket must be a unix socket path (a string without escapes, shorter than 108 bytes)", NULL);
	}
	long timeout = 30;
	{
		const char *s, *e;
		if (find_member(config, "timeoutSeconds", &s, &e)) {
			size_t n = (size_t)(e - s) < sizeof timeout_s ? (size_t)(e - s) : sizeof timeout_s - 1;
			memcpy(timeout_s, s, n);
			timeout = strtol(timeout_s, NULL, 10);
			if (timeout <= 0 || timeout > 3600)
				fail(CNI_ERR_CONFIG, "timeoutSeconds must be a whole number of seconds between 1 and 3600", timeout_s);
		}
	}

	/* The request: the CNI variables and the configuration exactly as the runtime gave it. */
	char *body = NULL;
	size_t body_len = 0;
	FILE *f = open_memstream(&body, &body_len);
	if (!f)
		fail(CNI_ERR_IO, "out of memory", NULL);
	fprintf(f, "{");
	put_env(f, "command", "CNI_COMMAND", 0);
	put_env(f, "containerId", "CNI_CONTAINERID", 1);
	put_env(f, "netns", "CNI_NETNS", 1);
	put_env(f, "ifname", "CNI_IFNAME", 1);
	put_env(f, "args", "CNI_ARGS", 1);
	put_env(f, "path", "CNI_PATH", 1);
	fprintf(f, ",\"config\":");
	fwrite(config, 1, config_len, f);
	fprintf(f, "}");
	fclose(f);

	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	strcpy(addr.sun_path, path);
	struct timeval tv = { .tv_sec = timeout };
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) || setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) ||
	    connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		char why[512];
		snprintf(why, sizeof why, "%s: %s", path, strerror(errno));
		if (strcmp(command, "DEL") == 0 || strcmp(command, "GC") == 0) {
			/* Nothing to undo that the agent will not prune itself once it is back. */
			fprintf(stderr, "weft-cni: %s: agent unreachable (%s); nothing to do\n", command, why);
			return 0;
		}
		fail(CNI_ERR_TRY_LATER, "the Weft agent on this node cannot be reached; the pod's network stays down until it can enrol the pod", why);
	}
	char head[256];
	int hlen = snprintf(head, sizeof head,
			    "POST /v1/cni HTTP/1.0\r\nHost: weft-agent\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n", body_len);
	if (write_all(fd, head, (size_t)hlen) || write_all(fd, body, body_len))
		fail(CNI_ERR_IO, "cannot send the request to the Weft agent", strerror(errno));
	size_t resp_len = 0;
	char *resp = read_all(fd, MAX_RESPONSE, &resp_len);
	if (!resp)
		fail(errno == EAGAIN || errno == EWOULDBLOCK ? CNI_ERR_TRY_LATER : CNI_ERR_IO, "no answer from the Weft agent",
		     errno == EAGAIN || errno == EWOULDBLOCK ? "timed out (timeoutSeconds)" : strerror(errno));
	close(fd);

	int status = 0;
	char *payload = strstr(resp, "\r\n\r\n");
	if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1 || !payload)
		fail(CNI_ERR_IO, "the Weft agent's answer is not HTTP", NULL);
	payload += 4;
	if (status == 200) {
		fputs(payload, stdout);
		return 0;
	}
	if (*payload == '{') {
		/* The agent's CNI error result, ready to print. */
		fputs(payload, stdout);
		return 1;
	}
	char msg[64];
	snprintf(msg, sizeof msg, "the Weft agent answered HTTP %d", status);
	fail(CNI_ERR_IO, msg, payload);
}
