/** The exporter's HTTP handler (lib/metrics.ts metricsRequestListener), served on loopback: no tracer, no root. */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { StaleFaultDetector } from '../lib/detector';
import { RET_PF_6_1 } from '../lib/kernels';
import { createMetricsServer, FaultMetrics } from '../lib/metrics';
import net from 'node:net';
import { collectGarbage } from './20.ring.setup';
import { stuckSignExtension } from './helpers/scenarios';

describe('40 metrics: the HTTP endpoint', () => {
  let server: http.Server;
  let port: number;

  before(async () => {
    const detector = new StaleFaultDetector({ retPf: RET_PF_6_1 });
    detector.push(stuckSignExtension(1500));
    const metrics = new FaultMetrics({
      detector,
      tracerStats: () => ({ submitted: 1500, dropped: 0, bpfStatsEnabled: false, programs: [], stream: null }),
      kernel: { release: '6.1.0', affected: true },
      mode: 'kprobe',
    });
    server = createMetricsServer(metrics.registry);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  function request(method: string, path: string) {
    return new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
      http.request({ host: '127.0.0.1', port, path, method }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
      }).on('error', reject).end();
    });
  }

  it('GET /metrics, / and with a query string: 200, Prometheus text', async () => {
    for (const path of ['/metrics', '/', '/metrics?x=1', '/metrics?', '/?a=b&c', '/metrics#frag']) {
      const r = await request('GET', path);
      assert.equal(r.status, 200, path);
      assert.match(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/);
      assert.match(r.body, /^kvmfault_stuck_vcpus 1$/m, path);
      assert.equal(Number(r.headers['content-length']), Buffer.byteLength(r.body));
    }
  });

  it('HEAD /metrics (and with a query): 200 with the headers and no body', async () => {
    const get = await request('GET', '/metrics');
    for (const path of ['/metrics', '/metrics?x=1']) {
      const r = await request('HEAD', path);
      assert.equal(r.status, 200, path);
      assert.match(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/);
      assert.equal(r.body, '');
      assert.ok(Math.abs(Number(r.headers['content-length']) - Buffer.byteLength(get.body)) < 64, 'the length GET would send');
    }
  });

  it('other paths 404, other methods 405 with Allow', async () => {
    for (const path of ['/metricsx', '/foo?metrics', '/metrics/']) assert.equal((await request('GET', path)).status, 404, path);
    const r = await request('POST', '/metrics?x=1');
    assert.equal(r.status, 405);
    assert.equal(r.headers.allow, 'GET, HEAD');
  });

  it('under load: 200 concurrent scrapes while 50 slow clients hold connections open, a 1 MB URL; bounded memory', async function () {
    this.timeout(60_000);
    // slowloris: connections that send half a request line and then nothing
    const slow = await Promise.all(Array.from({ length: 50 }, () => new Promise<net.Socket>((resolve, reject) => {
      const sock = net.connect(port, '127.0.0.1', () => { sock.write('GET /metr'); resolve(sock); });
      sock.on('error', () => undefined).once('error', reject);
    })));
    try {
      const results = await Promise.all(Array.from({ length: 200 }, () => request('GET', '/metrics')));
      assert.ok(results.every((r) => r.status === 200 && r.body.includes('kvmfault_stuck_vcpus 1')), 'a concurrent scrape failed');
      // a 1 MB URL: refused with 431 (headers too large), and the server answers the next request
      const huge = await new Promise<string>((resolve) => {
        const sock = net.connect(port, '127.0.0.1', () => sock.end(`GET /${'x'.repeat(1 << 20)} HTTP/1.1\r\nHost: x\r\n\r\n`));
        let text = '';
        sock.on('data', (d) => (text += d.toString('latin1'))).on('close', () => resolve(text)).on('error', () => resolve(text));
      });
      assert.match(huge, /^HTTP\/1\.1 431 /, huge.slice(0, 100) || '(connection closed with no answer)');
      assert.equal((await request('GET', '/metrics')).status, 200);
      // memory: 2000 more scrapes grow the heap by a bounded amount (one scrape's text is ~10 KiB)
      await collectGarbage();
      const before = process.memoryUsage().heapUsed;
      for (let i = 0; i < 20; i++) await Promise.all(Array.from({ length: 100 }, () => request('GET', '/metrics')));
      await collectGarbage();
      const grew = (process.memoryUsage().heapUsed - before) / 2 ** 20;
      assert.ok(grew < 32, `the heap grew ${grew.toFixed(1)} MiB over 2000 scrapes`);
      this.test!.title += ` (heap ${grew >= 0 ? '+' : ''}${grew.toFixed(1)} MiB after 2000 scrapes)`;
    } finally {
      for (const s of slow) s.destroy();
    }
  });
});
