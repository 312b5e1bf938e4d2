#!/usr/bin/env node
// An idempotent KafkaJS producer that runs until SIGTERM.
//
// For the failover tests (tests/tests/cluster_failover.rs): it produces
// numbered records (value `v<i>` with seven digits, so a value names its
// record; key `k<i % 37>`) with `idempotent: true` and acks=-1, while the
// test kills and restarts brokers. One loop per partition sends small
// batches to that partition alone and waits for each answer, so a
// record's offset is its batch's base offset plus its place in the batch
// (a send() spanning partitions led by several brokers can lose track of a
// partition whose leader moves during its retries). KafkaJS retries an
// idempotent send without limit, with the same sequence numbers.
//
// It checks nothing itself and reports on stdout, one line each:
//
//     ack PARTITION OFFSET VALUE   a record acknowledged at that position
//     fail VALUE ERROR             a record whose send() threw
//
// On SIGTERM (or at --max-seconds) each loop finishes its send in flight,
// then the script prints `done produced=N acked=N failed=N` and exits 0.
// KafkaJS logs warnings and errors to stderr.
'use strict'

const { Kafka, logLevel } = require('kafkajs')
const kafkajsVersion = require('kafkajs/package.json').version

const NAME = 'kafkajs_producer'
const KEYS = 37
// Records per send, and the pause between the sends of one loop.
const BATCH = 5
const PAUSE_MS = 25

function parseArgs(argv) {
  const usage =
    `usage: ${NAME}.js --bootstrap HOST:PORT,... --topic NAME --partitions N [--max-seconds S]`
  const args = { maxSeconds: 100 }
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]]
    if (value === undefined) fail(`${flag} needs a value\n${usage}`)
    switch (flag) {
      case '--bootstrap': args.bootstrap = value; break
      case '--topic': args.topic = value; break
      case '--partitions': args.partitions = Number(value); break
      case '--max-seconds': args.maxSeconds = Number(value); break
      default: fail(`unknown argument ${flag}\n${usage}`)
    }
  }
  if (!args.bootstrap || !args.topic || !(args.partitions > 0)) fail(usage)
  return args
}

function fail(message) {
  process.stderr.write(`${NAME}: FAIL: ${message}\n`)
  process.exit(1)
}

function log(message) {
  process.stderr.write(`[${(performance.now() / 1000).toFixed(3)}] ${NAME}: ${message}\n`)
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

async function main() {
  const args = parseArgs(process.argv.slice(2))
  let stopping = false
  process.on('SIGTERM', () => { stopping = true })
  const startedAt = Date.now()
  const over = () => stopping || Date.now() - startedAt > args.maxSeconds * 1000

  const kafka = new Kafka({
    clientId: NAME,
    brokers: args.bootstrap.split(','),
    connectionTimeout: 3000,
    requestTimeout: 30000,
    // The client's own retries (connecting, metadata) must outlast a
    // failover, or a send() to a dead leader fails with
    // KafkaJSNumberOfRetriesExceeded however many retries the producer
    // has: about 30 s here, against at most 8 s for a failover.
    retry: { retries: 30, initialRetryTime: 100, maxRetryTime: 1000 },
    logLevel: logLevel.WARN,
  })
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 })
  await producer.connect()
  log(`KafkaJS ${kafkajsVersion}, connected`)

  const counts = { produced: 0, acked: 0, failed: 0 }
  const lines = []
  const flush = () => {
    if (lines.length > 0) process.stdout.write(lines.splice(0).join(''))
  }

  async function loop(partition) {
    while (!over()) {
      const values = []
      for (let k = 0; k < BATCH; k++) values.push(`v${String(counts.produced++).padStart(7, '0')}`)
      const messages = values.map(value => ({
        partition,
        key: `k${String(Number(value.slice(1)) % KEYS).padStart(2, '0')}`,
        value,
      }))
      try {
        const results = await producer.send({ topic: args.topic, acks: -1, timeout: 30000, messages })
        const result = results.find(r => r.partition === partition)
        if (result === undefined || result.errorCode !== 0) {
          throw new Error(`no result for partition ${partition}: ${JSON.stringify(results)}`)
        }
        const base = BigInt(result.baseOffset)
        values.forEach((value, k) => lines.push(`ack ${partition} ${base + BigInt(k)} ${value}\n`))
        counts.acked += values.length
      } catch (err) {
        values.forEach(value => lines.push(`fail ${value} ${String(err).replace(/\n/g, ' ')}\n`))
        counts.failed += values.length
        log(`send to partition ${partition} failed: ${err.stack || err}`)
      }
      flush()
      await sleep(PAUSE_MS)
    }
  }

  const loops = []
  for (let partition = 0; partition < args.partitions; partition++) loops.push(loop(partition))
  await Promise.all(loops)
  log(`stopping after ${counts.produced} records`)
  await producer.disconnect()
  flush()
  process.stdout.write(
    `done produced=${counts.produced} acked=${counts.acked} failed=${counts.failed}\n`
  )
}

main().catch(err => fail(err.stack || String(err)))
