#!/usr/bin/env node
// A KafkaJS consumer group runs three times over a growing topic.
//
// Checks, against one broker:
// - run 1 (auto-commit) of a fresh group with fromBeginning reads every
//   record of the first batch once, where it was produced; the committed
//   offsets (admin.fetchOffsets) reach the log end; while it runs,
//   describeGroups shows one Stable member owning all partitions and
//   listGroups lists the group as a "consumer" group; after disconnect()
//   the group is Empty with no members and the offsets stay;
// - run 2 (autoCommit off) gets exactly the second batch, nothing older, and
//   commits by hand (consumer.commitOffsets) halfway through each partition's
//   new records; fetchOffsets reports exactly that;
// - run 3 (auto-commit) gets exactly the records from those offsets on,
//   including the uncommitted half of the second batch and a third batch,
//   and the committed offsets end at the log end.
//
// Prints one "kafkajs_group: OK ..." line on success; exits 1 otherwise.
'use strict'

const { Kafka, logLevel, AssignerProtocol } = require('kafkajs')
const kafkajsVersion = require('kafkajs/package.json').version

const NAME = 'kafkajs_group'
const PARTITIONS = 3
const KEYS = 37
const BATCHES = [900, 600, 300]
// How long a run keeps going after it has what it expects, to catch records
// delivered beyond that.
const QUIET_MS = 2000

function fail(message) {
  process.stderr.write(`${NAME}: FAIL: ${message}\n`)
  process.exit(1)
}

function check(condition, message) {
  if (!condition) fail(message)
}

const started = Date.now()
function log(message) {
  const t = ((Date.now() - started) / 1000).toFixed(2).padStart(7)
  process.stderr.write(`[${t}] ${NAME}: ${message}\n`)
}

function parseArgs(argv) {
  const usage =
    `usage: ${NAME}.js --bootstrap HOST:PORT --topic NAME --group ID [--timeout SECONDS]`
  const args = { timeout: 240 }
  for (let i = 0; i < argv.length; i += 2) {
    const value = argv[i + 1]
    if (value === undefined) fail(`${argv[i]} needs a value\n${usage}`)
    switch (argv[i]) {
      case '--bootstrap': args.bootstrap = value; break
      case '--topic': args.topic = value; break
      case '--group': args.group = value; break
      case '--timeout': args.timeout = Number(value); break
      default: fail(`unknown argument ${argv[i]}\n${usage}`)
    }
  }
  if (!args.bootstrap || !args.topic || !args.group) fail(`missing arguments\n${usage}`)
  if (!(args.timeout > 0)) fail('--timeout must be positive')
  return args
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function waitFor(condition, ms, what) {
  const end = Date.now() + ms
  for (;;) {
    const result = await condition()
    if (result === true) return
    if (Date.now() >= end) fail(`${what} did not happen within ${ms / 1000} s: ${result}`)
    await sleep(100)
  }
}

function sameOffsets(a, b) {
  return JSON.stringify(a) === JSON.stringify(b)
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  const overall = () => fail(`overall deadline of ${args.timeout} s passed`)
  setTimeout(overall, args.timeout * 1000).unref()

  const kafka = new Kafka({
    clientId: NAME,
    brokers: [args.bootstrap],
    logLevel: logLevel.ERROR,
    retry: { retries: 10 },
  })
  const admin = kafka.admin()
  await admin.connect()
  const created = await admin.createTopics({
    topics: [{ topic: args.topic, numPartitions: PARTITIONS }],
    waitForLeaders: true,
  })
  check(created, `createTopics says ${args.topic} already existed`)

  // Records go to partition i % 3, so each one's offset follows from the
  // base offset the produce answer gives for its partition.
  const producer = kafka.producer({ allowAutoTopicCreation: false })
  await producer.connect()
  const acks = new Map() // "partition/offset" -> record number
  const ends = [0, 0, 0]
  let next = 0
  async function produce(count) {
    const messages = []
    for (let n = 0; n < count; n++, next++) {
      messages.push({
        partition: next % PARTITIONS,
        key: `key-${String(next % KEYS).padStart(2, '0')}`,
        value: `rec-${String(next).padStart(6, '0')}`,
      })
    }
    const meta = await producer.send({ topic: args.topic, acks: -1, messages })
    const base = new Map(meta.map((m) => [m.partition, Number(m.baseOffset)]))
    const position = [0, 0, 0]
    for (const m of messages) {
      const offset = base.get(m.partition) + position[m.partition]++
      acks.set(`${m.partition}/${offset}`, Number(m.value.slice(4)))
      ends[m.partition] = Math.max(ends[m.partition], offset + 1)
    }
    log(`produced ${count} records, log end ${JSON.stringify(ends)}`)
  }

  async function committed() {
    const answer = await admin.fetchOffsets({ groupId: args.group, topics: [args.topic] })
    const topic = answer.find((t) => t.topic === args.topic)
    const result = [-1, -1, -1]
    for (const p of topic ? topic.partitions : []) result[p.partition] = Number(p.offset)
    return result
  }

  async function describe() {
    const { groups } = await admin.describeGroups([args.group])
    check(groups.length === 1, `describeGroups returned ${groups.length} groups for one id`)
    const group = groups[0]
    check(group.errorCode === 0, `describeGroups error code ${group.errorCode}`)
    return group
  }

  // One run of the group: collects what it is given until `expected` (a set
  // of "partition/offset") arrived and QUIET_MS passed; `during` runs then,
  // while the member is still in the group.
  async function run(label, autoCommit, expected, during) {
    const consumer = kafka.consumer({
      groupId: args.group,
      sessionTimeout: 6000,
      heartbeatInterval: 1000,
      maxWaitTimeInMs: 100,
      retry: { retries: 10 },
    })
    consumer.on(consumer.events.CRASH, (event) => {
      fail(`${label}: consumer crashed: ${event.payload.error}`)
    })
    await consumer.connect()
    await consumer.subscribe({ topics: [args.topic], fromBeginning: true })
    const got = []
    await consumer.run({
      autoCommit,
      eachMessage: async ({ partition, message }) => {
        got.push({
          partition,
          offset: Number(message.offset),
          key: String(message.key),
          value: String(message.value),
        })
      },
    })
    const seen = () => new Set(got.map((r) => `${r.partition}/${r.offset}`))
    await waitFor(() => {
      const s = seen()
      const missing = [...expected].filter((k) => !s.has(k))
      return missing.length === 0 || `${missing.length} missing, first ${missing.slice(0, 5)}`
    }, 60000, `${label}: delivery of ${expected.size} records`)
    await sleep(QUIET_MS)

    const counted = new Set()
    for (const r of got) {
      const where = `${r.partition}/${r.offset}`
      check(!counted.has(where), `${label}: ${where} delivered twice`)
      counted.add(where)
      check(
        expected.has(where),
        `${label}: ${where} delivered, but it lies before the committed offset or was never produced`
      )
      const index = acks.get(where)
      check(
        r.value === `rec-${String(index).padStart(6, '0')}`,
        `${label}: ${where} holds ${r.value}, record ${index} was produced there`
      )
      check(
        r.key === `key-${String(index % KEYS).padStart(2, '0')}`,
        `${label}: ${where} has key ${r.key}`
      )
    }
    check(counted.size === expected.size, `${label}: got ${counted.size} of ${expected.size} records`)
    const first = [0, 1, 2].map((p) =>
      Math.min(...got.filter((r) => r.partition === p).map((r) => r.offset))
    )
    if (during) await during(consumer, got)
    await consumer.disconnect()
    log(`${label}: read ${got.length} records, first offsets ${JSON.stringify(first)}`)
    return first
  }

  function recordsFrom(starts) {
    return new Set([...acks.keys()].filter((k) => {
      const [p, o] = k.split('/').map(Number)
      return o >= starts[p]
    }))
  }

  async function checkMembership(label) {
    const group = await describe()
    check(group.state === 'Stable', `${label}: group state ${group.state} with one running member`)
    check(group.protocolType === 'consumer', `${label}: protocol type ${group.protocolType}`)
    check(group.members.length === 1, `${label}: describeGroups lists ${group.members.length} members`)
    const assignment = AssignerProtocol.MemberAssignment.decode(group.members[0].memberAssignment)
    const owned = (assignment.assignment[args.topic] || []).slice().sort()
    check(sameOffsets(owned, [0, 1, 2]), `${label}: the member is assigned ${JSON.stringify(owned)}`)
    const { groups } = await admin.listGroups()
    const listed = groups.find((g) => g.groupId === args.group)
    check(
      listed !== undefined,
      `${label}: listGroups omits ${args.group}: ${JSON.stringify(groups)}`
    )
    check(
      listed.protocolType === 'consumer',
      `${label}: listGroups gives protocol type ${listed.protocolType}`
    )
  }

  async function checkEmpty(label, offsets) {
    const group = await describe()
    check(group.state === 'Empty' && group.members.length === 0,
      `${label}: group state ${group.state} with ${group.members.length} members after disconnect`)
    const now = await committed()
    check(
      sameOffsets(now, offsets),
      `${label}: committed ${JSON.stringify(now)} after disconnect, ` +
        `expected ${JSON.stringify(offsets)}`
    )
  }

  // Run 1: auto-commit from the beginning.
  await produce(BATCHES[0])
  const end1 = ends.slice()
  await run('run 1', true, recordsFrom([0, 0, 0]), async () => {
    await waitFor(async () => {
      const now = await committed()
      return (
        sameOffsets(now, end1) ||
        `committed ${JSON.stringify(now)}, log end ${JSON.stringify(end1)}`
      )
    }, 30000, 'run 1: auto-commit to the log end')
    await checkMembership('run 1')
  })
  await checkEmpty('after run 1', end1)

  // Run 2: nothing old; commit halfway by hand.
  await produce(BATCHES[1])
  const end2 = ends.slice()
  const half = [0, 1, 2].map((p) => end1[p] + Math.floor((end2[p] - end1[p]) / 2))
  const first2 = await run('run 2', false, recordsFrom(end1), async (consumer) => {
    await consumer.commitOffsets(
      [0, 1, 2].map((p) => ({ topic: args.topic, partition: p, offset: String(half[p]) }))
    )
    const now = await committed()
    check(
      sameOffsets(now, half),
      `run 2: committed ${JSON.stringify(now)} after commitOffsets(${JSON.stringify(half)})`
    )
    await checkMembership('run 2')
  })
  check(
    sameOffsets(first2, end1),
    `run 2 started at ${JSON.stringify(first2)}, committed ${JSON.stringify(end1)}`
  )
  await checkEmpty('after run 2', half)

  // Run 3: resumes at the hand-made commit.
  await produce(BATCHES[2])
  const end3 = ends.slice()
  const first3 = await run('run 3', true, recordsFrom(half), async () => {
    await waitFor(async () => {
      const now = await committed()
      return (
        sameOffsets(now, end3) ||
        `committed ${JSON.stringify(now)}, log end ${JSON.stringify(end3)}`
      )
    }, 30000, 'run 3: auto-commit to the log end')
  })
  check(
    sameOffsets(first3, half),
    `run 3 started at ${JSON.stringify(first3)}, committed ${JSON.stringify(half)}`
  )
  await checkEmpty('after run 3', end3)

  await producer.disconnect()
  await admin.disconnect()
  process.stdout.write(
    `${NAME}: OK ${acks.size} records in three runs, resumed at ${JSON.stringify(end1)} and ` +
      `${JSON.stringify(half)}, committed ${JSON.stringify(end3)} (kafkajs ${kafkajsVersion})\n`
  )
  process.exit(0)
}

main().catch((err) => fail(`client error: ${err && err.stack ? err.stack : err}`))
