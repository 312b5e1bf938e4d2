#!/usr/bin/env node
// Committed and aborted transactions of KafkaJS.
//
// Creates a topic, runs the transactions of --plan (as txn_common.py reads
// it: `commit:100,abort:100,...`, record i to partition i % partitions with
// value t<txn>-r<i>) with one transactional producer (`transaction()`,
// `send`, `commit` or `abort`), waits (bounded) until every partition's
// end as KafkaJS's admin reads it (ListOffsets at read_committed: the last
// stable offset) reaches its records plus a marker per transaction, then
// reads the topic with two KafkaJS group consumers, one at read_committed
// (KafkaJS's default) and one with `readUncommitted`, each until KafkaJS
// reports every partition's last batch at the high watermark (its batch
// events count markers and filtered records in the offsets). Checks that
// read_committed shows exactly the committed records and read_uncommitted
// all of them, each once, in produce order per partition.
//
// Each transaction also sends offsets for a group (sendOffsets); once the
// transactions are done the group's committed offset must be the one the
// last committed transaction sent.
//
// Prints one "kafkajs_commit_abort: OK ..." line on success; exits 1 with
// the mismatches otherwise.
'use strict'

// Every record names its partition; the default partitioner's notice is noise.
process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1'

const { Kafka, logLevel } = require('kafkajs')
const kafkajsVersion = require('kafkajs/package.json').version

const NAME = 'kafkajs_commit_abort'

function log(message) {
  process.stderr.write(`[${(process.uptime()).toFixed(2)}] ${NAME}: ${message}\n`)
}

function fail(message) {
  process.stderr.write(`${NAME}: FAIL: ${message}\n`)
  process.exit(1)
}

function parseArgs(argv) {
  const usage = `usage: ${NAME}.js --bootstrap HOST:PORT --topic NAME --plan commit:N,abort:N,... [--partitions N] [--timeout SECONDS]`
  const args = { partitions: 3, timeout: 50 }
  for (let i = 0; i < argv.length; i += 2) {
    const value = argv[i + 1]
    if (value === undefined) fail(`${argv[i]} needs a value\n${usage}`)
    switch (argv[i]) {
      case '--bootstrap': args.bootstrap = value; break
      case '--topic': args.topic = value; break
      case '--plan': args.plan = value; break
      case '--partitions': args.partitions = Number(value); break
      case '--timeout': args.timeout = Number(value); break
      default: fail(`unknown argument ${argv[i]}\n${usage}`)
    }
  }
  if (!args.bootstrap || !args.topic || !args.plan) fail(usage)
  args.plan = args.plan.split(',').map(item => {
    const [outcome, count] = item.split(':')
    if (!['commit', 'abort'].includes(outcome) || !(Number(count) > 0)) fail(`bad plan item ${item}`)
    return { committed: outcome === 'commit', count: Number(count) }
  })
  return args
}

// [{ txn, committed, records: [{ partition, value }] }], as txn_common.plan_records.
function planRecords(plan, partitions) {
  let index = 0
  return plan.map(({ committed, count }, txn) => {
    const records = []
    for (let i = 0; i < count; i++, index++) {
      const value = `t${String(txn).padStart(3, '0')}-r${String(index).padStart(6, '0')}`
      records.push({ partition: index % partitions, value })
    }
    return { txn, committed, records }
  })
}

function sleep(ms) {
  return new Promise(resolve => setTimeout(resolve, ms))
}

async function waitForEnds(admin, topic, wanted, deadline) {
  const end = Math.min(deadline, Date.now() + 15000)
  for (;;) {
    const offsets = await admin.fetchTopicOffsets(topic)
    const stable = offsets.map(o => [o.partition, Number(o.high)]).sort((a, b) => a[0] - b[0])
    if (stable.every(([p, h]) => h === wanted[p])) return
    if (Date.now() >= end) fail(`last stable offsets ${JSON.stringify(stable)} did not reach ${JSON.stringify(wanted)} in time`)
    await sleep(100)
  }
}

// Waits (bounded) until the group's committed offset of partition 0 is
// `wanted`: what the last committed transaction sent, never an aborted
// one's (the COMMIT marker on __consumer_offsets may land just after the
// topic's own markers).
async function waitForGroupOffset(admin, groupId, topic, wanted, deadline) {
  const end = Math.min(deadline, Date.now() + 15000)
  for (;;) {
    const fetched = await admin.fetchOffsets({ groupId, topics: [topic] })
    const partition = fetched.flatMap(t => t.partitions).find(p => p.partition === 0)
    const offset = partition ? String(partition.offset) : 'none'
    if (offset === wanted) return
    if (Number(offset) > Number(wanted)) fail(`group ${groupId} shows offset ${offset}, sent by an aborted transaction (wanted ${wanted})`)
    if (Date.now() >= end) fail(`group ${groupId} shows offset ${offset}, wanted ${wanted}`)
    await sleep(100)
  }
}

// Reads the whole topic with a new group; returns [[offset, value]] per partition.
async function readAll(kafka, topic, partitions, readUncommitted, ends, deadline) {
  const isolation = readUncommitted ? 'read_uncommitted' : 'read_committed'
  const consumer = kafka.consumer({
    groupId: `${topic}-${isolation}`,
    readUncommitted,
    maxWaitTimeInMs: 100,
    sessionTimeout: 10000,
  })
  const read = Array.from({ length: partitions }, () => [])
  const next = Array.from({ length: partitions }, () => 0)
  const done = () => next.every((n, p) => n >= ends[p])
  let finished
  const complete = new Promise(resolve => { finished = resolve })
  consumer.on(consumer.events.END_BATCH_PROCESS, ({ payload }) => {
    if (payload.topic !== topic || payload.firstOffset === null) return
    next[payload.partition] = Math.max(next[payload.partition], Number(payload.lastOffset) + 1)
    if (done()) finished()
  })
  await consumer.connect()
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      read[partition].push([Number(message.offset), message.value.toString()])
    },
  })
  const left = deadline - Date.now()
  let timer
  const timeout = new Promise(resolve => { timer = setTimeout(resolve, Math.max(0, left)) })
  await Promise.race([complete, timeout])
  clearTimeout(timer)
  await consumer.disconnect()
  if (!done()) fail(`${isolation}: read up to ${JSON.stringify(next)}, log ends ${JSON.stringify(ends)}, at the deadline`)
  return read
}

function checkRead(isolation, read, txns, partitions, errors) {
  for (let p = 0; p < partitions; p++) {
    const wanted = txns.flatMap(t => t.records.filter(r => r.partition === p).map(r => r.value))
    const values = read[p].map(([, v]) => v)
    const offsets = read[p].map(([o]) => o)
    if (JSON.stringify(values) !== JSON.stringify(wanted)) {
      const missing = wanted.filter(v => !values.includes(v)).slice(0, 5)
      const extra = values.filter(v => !wanted.includes(v)).slice(0, 5)
      errors.push(`${isolation} partition ${p}: read ${values.length} records, wanted ${wanted.length}; missing ${missing}, unexpected ${extra}`)
    }
    if (offsets.some((o, i) => i > 0 && o <= offsets[i - 1])) {
      errors.push(`${isolation} partition ${p}: offsets not increasing: ${offsets.slice(0, 20)}`)
    }
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  const deadline = Date.now() + args.timeout * 1000
  const watchdog = setTimeout(() => fail(`overall deadline of ${args.timeout} s passed`), args.timeout * 1000 + 5000)
  watchdog.unref()

  const kafka = new Kafka({
    clientId: NAME,
    brokers: [args.bootstrap],
    connectionTimeout: 10000,
    requestTimeout: 30000,
    retry: { retries: 5 },
    logLevel: logLevel.WARN,
  })
  const admin = kafka.admin()
  await admin.connect()
  const created = await admin.createTopics({
    topics: [{ topic: args.topic, numPartitions: args.partitions, replicationFactor: 1 }],
    waitForLeaders: true,
    timeout: 30000,
  })
  if (!created) fail(`${args.topic} already exists`)

  const txns = planRecords(args.plan, args.partitions)
  const offsetsGroup = `${args.topic}-offsets`
  const producer = kafka.producer({
    transactionalId: `${args.topic}-txn`,
    idempotent: true,
    maxInFlightRequests: 1,
  })
  await producer.connect()
  for (const { txn, committed, records } of txns) {
    const transaction = await producer.transaction()
    await transaction.send({
      topic: args.topic,
      acks: -1,
      messages: records.map(r => ({ partition: r.partition, key: r.value, value: r.value })),
    })
    // Offsets in the transaction: partition 0's committed offset for the
    // offsets group becomes the number of this transaction plus one, but
    // only if it commits.
    await transaction.sendOffsets({
      consumerGroupId: offsetsGroup,
      topics: [{ topic: args.topic, partitions: [{ partition: 0, offset: String(txn + 1) }] }],
    })
    if (committed) await transaction.commit()
    else await transaction.abort()
    log(`transaction ${txn}: ${committed ? 'committed' : 'aborted'} ${records.length} records`)
  }
  await producer.disconnect()

  const ends = Array.from({ length: args.partitions }, (_, p) =>
    txns.reduce((n, t) => {
      const here = t.records.filter(r => r.partition === p).length
      return n + here + (here > 0 ? 1 : 0)
    }, 0)
  )
  await waitForEnds(admin, args.topic, ends, deadline)
  const lastCommitted = txns.filter(t => t.committed).map(t => t.txn).pop()
  const sentOffset = String(lastCommitted + 1)
  await waitForGroupOffset(admin, offsetsGroup, args.topic, sentOffset, deadline)
  await admin.disconnect()

  const committedRead = await readAll(kafka, args.topic, args.partitions, false, ends, deadline)
  const uncommittedRead = await readAll(kafka, args.topic, args.partitions, true, ends, deadline)
  const errors = []
  checkRead('read_committed', committedRead, txns.filter(t => t.committed), args.partitions, errors)
  checkRead('read_uncommitted', uncommittedRead, txns, args.partitions, errors)
  if (errors.length) fail(`${errors.length} mismatches:\n  ${errors.slice(0, 25).join('\n  ')}`)

  const committedCount = txns.filter(t => t.committed).reduce((n, t) => n + t.records.length, 0)
  const totalCount = txns.reduce((n, t) => n + t.records.length, 0)
  const commits = txns.filter(t => t.committed).length
  clearTimeout(watchdog)
  process.stdout.write(
    `${NAME}: OK ${txns.length} transactions (${commits} committed, ${txns.length - commits} aborted): ` +
    `read_committed ${committedCount} read_uncommitted ${totalCount} log_ends [${ends.join(', ')}] ` +
    `(kafkajs ${kafkajsVersion}); sendOffsets: group offset ${sentOffset}\n`
  )
}

main().catch(err => fail(err.stack || String(err)))
