// The usage lines the router writes at exit for what Redis never took (README "At stop"):
// `usage not recorded at exit: key K deployment "D" requests N prompt_tokens P completion_tokens C
// total_tokens T`, or `usage perhaps not recorded (sent, never confirmed) at exit: …`.
const LINE =
  /usage (not recorded|perhaps not recorded \(sent, never confirmed\)) at exit: key (\S+) deployment (\S+) requests (-?\d+) prompt_tokens (-?\d+) completion_tokens (-?\d+) total_tokens (-?\d+)/g;

/** every exit line in `stderr`: sure (not recorded) or not (perhaps), key, deployment as printed (quoted), numbers */
export function exitLines(stderr) {
  return [...stderr.matchAll(LINE)].map((m) => ({
    sure: m[1] === 'not recorded',
    key: m[2],
    deployment: m[3],
    requests: Number(m[4]),
    prompt: Number(m[5]),
    completion: Number(m[6]),
    total: Number(m[7]),
  }));
}
